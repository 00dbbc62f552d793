//! Placeholder replaced by the checker implementation.
