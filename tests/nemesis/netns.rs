//! Real network partitions: each node runs in a network namespace of its
//! own, plugged into a bridge that lives in a hub namespace, and a cut is an
//! `iptables` rule in the receiving node's namespace that drops the sender's
//! packets. Packets vanish instead of being refused, so TCP stalls and times
//! out as it would on a broken network. The test process stays in the root
//! namespace and reaches every node through a veth into the hub, so clients
//! and the harness keep their view of all nodes whatever is cut.
//!
//! Names carry the test process's pid; namespaces left behind by a test run
//! that died are found by that pid and removed before new ones are made.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace this harness makes.
const NAMESPACE_PREFIX: &str = "hdbnem-";

/// Second octet of the private subnets used (10.213.x.0/24).
const SUBNET_OCTET: u8 = 213;

/// Host part of the root namespace's address on each subnet.
const ROOT_HOST: u8 = 254;

static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);

/// A command's failure, with what it printed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether this machine lets the harness make namespaces and iptables rules;
/// the reason when it doesn't. Probed once per test process.
pub fn unavailable_reason() -> Option<String> {
    static PROBED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root (CAP_NET_ADMIN)".into());
    }
    for program in ["ip", "iptables"] {
        if Command::new(program).arg("--version").output().is_err() {
            return Some(format!(
                "`{program}` is not installed (Debian: iproute2, iptables)"
            ));
        }
    }
    remove_stale();
    let probe = format!("{NAMESPACE_PREFIX}{}-probe", std::process::id());
    if let Err(error) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {error}"));
    }
    let iptables = run(
        "ip",
        &[
            "netns", "exec", &probe, "iptables", "-A", "INPUT", "-s", "10.0.0.1", "-j", "DROP",
        ],
    );
    let _ = run("ip", &["netns", "del", &probe]);
    iptables
        .err()
        .map(|error| format!("iptables does not work in a namespace: {error}"))
}

/// Removes namespaces (and kills their processes) left by harness runs whose
/// process is gone.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NAMESPACE_PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().unwrap_or_default();
        if owner.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(owner).exists() {
            kill_processes_in(name);
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

fn kill_processes_in(namespace: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", namespace]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a pid listed in a namespace this harness made.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A private network of namespaces, one per node, torn down on drop.
pub struct Netns {
    hub: String,
    root_link: String,
    nodes: BTreeMap<u64, (String, Ipv4Addr)>,
    subnet: [u8; 3],
}

impl Netns {
    /// Makes a namespace per node id, all on one bridge, plus a link from
    /// the root namespace; fails with the command that failed.
    pub fn create(ids: &[u64]) -> Result<Netns, String> {
        remove_stale();
        let serial = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = free_subnet(pid.wrapping_add(serial))?;
        let base = format!("{NAMESPACE_PREFIX}{pid}-{serial}");
        let mut net = Netns {
            hub: format!("{base}-hub"),
            // Interface names have at most 15 bytes.
            root_link: format!("hdb{}x{}", pid % 100_000, serial % 1000),
            nodes: BTreeMap::new(),
            subnet,
        };
        // From here on, `net`'s drop removes whatever was made.
        run("ip", &["netns", "add", &net.hub])?;
        net.in_hub(&["link", "add", "br0", "type", "bridge"])?;
        net.in_hub(&["link", "set", "br0", "up"])?;
        for id in ids {
            let name = format!("{base}-n{id}");
            run("ip", &["netns", "add", &name])?;
            let ip = net.address(u8::try_from(*id).map_err(|_| format!("node id {id} over 253"))?);
            net.nodes.insert(*id, (name.clone(), ip));
            let port = format!("n{id}");
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &name, "type", "veth", "peer", "name", &port,
                    "netns", &net.hub,
                ],
            )?;
            net.in_hub(&["link", "set", &port, "master", "br0"])?;
            net.in_hub(&["link", "set", &port, "up"])?;
            let cidr = format!("{ip}/24");
            run("ip", &["-n", &name, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", &name, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
        }
        let root_link = net.root_link.clone();
        run(
            "ip",
            &[
                "link", "add", &root_link, "type", "veth", "peer", "name", "up0", "netns", &net.hub,
            ],
        )?;
        net.in_hub(&["link", "set", "up0", "master", "br0"])?;
        net.in_hub(&["link", "set", "up0", "up"])?;
        let root_cidr = format!("{}/24", net.address(ROOT_HOST));
        run("ip", &["addr", "add", &root_cidr, "dev", &root_link])?;
        run("ip", &["link", "set", &root_link, "up"])?;
        Ok(net)
    }

    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }

    fn in_hub(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.hub.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Node `id`'s address.
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        self.nodes[&id].1
    }

    /// The command prefix that runs a program in node `id`'s namespace.
    pub fn wrapper(&self, id: u64) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.nodes[&id].0.clone(),
        ]
    }

    /// Drops every packet from node `from` to node `to` (one way), at `to`.
    pub fn cut(&self, from: u64, to: u64) -> Result<(), String> {
        let source = self.ip(from).to_string();
        let namespace = &self.nodes[&to].0;
        run(
            "ip",
            &[
                "netns", "exec", namespace, "iptables", "-A", "INPUT", "-s", &source, "-j", "DROP",
            ],
        )
        .map(|_| ())
    }

    /// Drops `loss_percent` of the packets from node `from` to node `to`, at random.
    pub fn lose(&self, from: u64, to: u64, loss_percent: u8) -> Result<(), String> {
        let source = self.ip(from).to_string();
        let probability = format!("{:.2}", f64::from(loss_percent) / 100.0);
        let namespace = &self.nodes[&to].0;
        run(
            "ip",
            &[
                "netns",
                "exec",
                namespace,
                "iptables",
                "-A",
                "INPUT",
                "-s",
                &source,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ],
        )
        .map(|_| ())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        for (namespace, _) in self.nodes.values() {
            run(
                "ip",
                &["netns", "exec", namespace, "iptables", "-F", "INPUT"],
            )?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Namespaces outlive their deletion while processes are in them.
        for (namespace, _) in self.nodes.values() {
            kill_processes_in(namespace);
            let _ = run("ip", &["netns", "del", namespace]);
        }
        // Deleting the hub removes the bridge and every veth pair with it.
        let _ = run("ip", &["netns", "del", &self.hub]);
        let _ = run("ip", &["link", "del", &self.root_link]);
    }
}

/// A 10.213.x.0/24 subnet no address of this machine is on.
fn free_subnet(seed: u32) -> Result<[u8; 3], String> {
    let addresses = run("ip", &["-4", "-o", "addr", "show"])?;
    for attempt in 0..250u32 {
        let third = u8::try_from((seed.wrapping_add(attempt)) % 250 + 1).unwrap_or(1);
        let prefix = format!("10.{SUBNET_OCTET}.{third}.");
        if !addresses.contains(&prefix) {
            return Ok([10, SUBNET_OCTET, third]);
        }
    }
    Err(format!(
        "no free 10.{SUBNET_OCTET}.x.0/24 subnet on this machine"
    ))
}
