//! Raft core overhead: how many entries per second three members commit in
//! the deterministic simulator, with no I/O and no network delay, for 1 KiB
//! entries. Everything measured is the core plus the simulator's bookkeeping
//! (message queue, in-memory "disk", state machine, invariant checks off).
//!
//! Run: `cargo bench -p harmonydb-actors --bench raft_core`
//! (`HARMONYDB_BENCH_ENTRIES` changes the count, default 200,000.)

#[path = "../tests/raft_support/mod.rs"]
mod raft_support;

use std::time::Instant;

use raft_support::Sim;

const ENTRY_SIZE_BYTES: usize = 1024;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let entries: u64 = std::env::var("HARMONYDB_BENCH_ENTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    for batch in [1u64, 64] {
        let mut sim = Sim::new(1, &[1, 2, 3], &[], |config| {
            config.append_entries_max = 256;
            config.in_flight_max = 64;
        });
        sim.check_invariants_every_step = false;
        let leader = sim.elect();
        let payload = vec![0xabu8; ENTRY_SIZE_BYTES];
        let start_commit = sim.raft(leader).status().commit;
        let started = Instant::now();
        let mut proposed = 0;
        while proposed < entries {
            for _ in 0..batch {
                sim.raft_mut(leader)
                    .propose(payload.clone())
                    .expect("leader");
                proposed += 1;
            }
            sim.settle();
        }
        let target = start_commit + proposed;
        while sim.raft(leader).status().commit < target {
            sim.tick();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "3 members, {ENTRY_SIZE_BYTES} B entries, {batch:>2} proposals per round: {:>9.0} entries/s committed ({proposed} in {elapsed:.2} s, {} messages)",
            proposed as f64 / elapsed,
            sim.delivered
        );
    }
}
