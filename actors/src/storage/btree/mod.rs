//! The B+ tree: being written (see the storage issue).
