//! The compose demo's three HarmonyDB services, started by Docker Compose
//! from `compose/docker-compose.yml` as users start them, with a node image
//! made on this machine without pulling anything: the test's own
//! `harmonydb` binary, the shared libraries it links and their loader,
//! imported as a root file system (`docker import`). The nodes elect a
//! leader, take a write through node 1 and serve it to a linearizable read
//! through node 3; the leader's container is then disconnected from the
//! compose network, the other two elect a new leader and keep serving, and
//! once reconnected the old leader catches up and agrees on the leader.
//! Containers, network, volumes and image are removed however the test
//! ends. Skipped, with the reason printed, where no Docker engine or
//! Compose tool answers.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The compose file under test.
const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/docker-compose.yml");

/// The network's name in the compose file (Compose prefixes the project's).
const NETWORK: &str = "harmonydb";

/// Node ids; node `id` is the service `harmonydb{id}`.
const NODES: [u64; 3] = [1, 2, 3];

/// How long Docker may take to call every node healthy (its healthcheck
/// runs every 5 s).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the first election may take, image start included.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an election or a catch-up after a network change may take
/// (elections start after 1 to 2 s without a leader at the default tick).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a command; its stdout, or what went wrong.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// The Compose command: `docker compose` (v2) where it works, else
/// `docker-compose` (v1).
fn compose_tool() -> Option<Vec<&'static str>> {
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|tool| run(Command::new(tool[0]).args(&tool[1..]).arg("version")).is_ok())
}

/// Why this machine can't run the test, if it can't.
fn unavailable_reason() -> Option<String> {
    if let Err(error) = run(Command::new("docker").arg("info")) {
        return Some(format!("no Docker engine answers (`docker info`: {error})"));
    }
    if compose_tool().is_none() {
        return Some("neither `docker compose` nor `docker-compose` runs".into());
    }
    for tool in ["ldd", "tar"] {
        if run(Command::new(tool).arg("--version")).is_err() {
            return Some(format!(
                "`{tool}` is missing (needed to make the node image)"
            ));
        }
    }
    None
}

/// A node image imported from a root file system made here; removed on drop.
struct NodeImage {
    tag: String,
}

impl NodeImage {
    /// Makes the image `tag`: the test's `harmonydb` binary at
    /// /usr/local/bin/harmonydb, every library `ldd` lists at its path, the
    /// files the C library reads for users and name lookups, and the same
    /// environment, entry point and volume as the Dockerfile's image.
    fn build(tag: &str) -> NodeImage {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        let binary = Path::new(common::binary());
        let target = root.join("usr/local/bin/harmonydb");
        std::fs::create_dir_all(target.parent().expect("has a parent")).expect("mkdir bin");
        // Debug information is most of a debug build's size; the image
        // does not need it, so strip it when strip is there.
        let stripped = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&target)
            .arg(binary)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(binary, &target).expect("copy the binary");
        }
        for library in linked_libraries(binary) {
            let inside = root.join(library.trim_start_matches('/'));
            std::fs::create_dir_all(inside.parent().expect("has a parent")).expect("mkdir lib");
            // fs::copy follows symbolic links: the file lands at the path
            // the loader asks for.
            std::fs::copy(&library, &inside).unwrap_or_else(|e| panic!("copy {library}: {e}"));
        }
        for (path, text) in [
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
            ),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            // Service names resolve through Docker's DNS; /etc/hosts first.
            ("etc/nsswitch.conf", "hosts: files dns\n"),
        ] {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().expect("has a parent")).expect("mkdir etc");
            std::fs::write(&file, text).expect("write etc file");
        }
        for empty in ["tmp", "var/lib/harmonydb", "root"] {
            std::fs::create_dir_all(root.join(empty)).expect("mkdir");
        }
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod /tmp");
        let tarball = dir.path().join("rootfs.tar");
        run(Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg("."))
        .expect("tar the root file system");
        let changes = [
            "ENV HARMONYDB_DATA_DIR=/var/lib/harmonydb",
            "ENV HARMONYDB_HTTP_ADDR=0.0.0.0:8080",
            "ENV HARMONYDB_TCP_ADDR=0.0.0.0:7070",
            "EXPOSE 8080 7070",
            r#"VOLUME ["/var/lib/harmonydb"]"#,
            r#"ENTRYPOINT ["/usr/local/bin/harmonydb"]"#,
            r#"CMD ["serve"]"#,
        ];
        let mut import = Command::new("docker");
        import.arg("import");
        for change in changes {
            import.args(["--change", change]);
        }
        run(import.arg(&tarball).arg(tag)).expect("docker import the node image");
        println!(
            "node image {tag} made in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        NodeImage {
            tag: tag.to_string(),
        }
    }
}

impl Drop for NodeImage {
    fn drop(&mut self) {
        if let Err(error) = run(Command::new("docker").args(["rmi", "-f", &self.tag])) {
            eprintln!("could not remove image {}: {error}", self.tag);
        }
    }
}

/// The shared libraries and the loader `binary` needs, as `ldd` names
/// them (none for a static binary).
fn linked_libraries(binary: &Path) -> Vec<String> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let message = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            message.contains("not a dynamic executable") || message.contains("statically linked"),
            "ldd {}: {message}",
            binary.display()
        );
        return Vec::new();
    }
    // Lines are `name => /path (0x...)`, `/path (0x...)` for the loader,
    // or `linux-vdso.so.1 (0x...)`, which the kernel provides.
    assert!(
        !text.contains("not found"),
        "ldd could not find a library:\n{text}"
    );
    text.lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(str::to_string)
        .collect()
}

/// A Compose project running the node services; `down -v` on drop.
struct Project {
    tool: Vec<&'static str>,
    name: String,
    image: String,
}

impl Project {
    /// `up -d --no-build` of the three node services, with the image
    /// `image` and the host ports on loopback ports the system picks (the
    /// test reaches the nodes at their addresses on the compose network).
    fn up(tool: Vec<&'static str>, name: String, image: &str) -> Project {
        let project = Project {
            tool,
            name,
            image: image.to_string(),
        };
        let services: Vec<String> = NODES.iter().map(|id| format!("harmonydb{id}")).collect();
        let mut command = project.command();
        command.args(["up", "-d", "--no-build"]).args(&services);
        if let Err(error) = run(&mut command) {
            panic!("compose up failed: {error}\n{}", project.logs());
        }
        project
    }

    /// The Compose command for this project and file, with its variables.
    fn command(&self) -> Command {
        let mut command = Command::new(self.tool[0]);
        command
            .args(&self.tool[1..])
            .args(["-p", &self.name, "-f", COMPOSE_FILE])
            .env("HARMONYDB_IMAGE", &self.image);
        for id in NODES {
            command
                .env(format!("HARMONYDB{id}_HTTP_PORT"), "127.0.0.1:")
                .env(format!("HARMONYDB{id}_TCP_PORT"), "127.0.0.1:");
        }
        command
    }

    /// Node `id`'s container id.
    fn container(&self, id: u64) -> String {
        let mut command = self.command();
        command.args(["ps", "-q", &format!("harmonydb{id}")]);
        let id_text = run(&mut command).expect("compose ps");
        let container = id_text.trim().to_string();
        assert!(!container.is_empty(), "no container for harmonydb{id}");
        container
    }

    /// The project's network, as Docker names it.
    fn network(&self) -> String {
        let listed = run(Command::new("docker").args([
            "network",
            "ls",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.network={NETWORK}"),
            "--format",
            "{{.Name}}",
        ]))
        .expect("docker network ls");
        let names: Vec<&str> = listed.split_whitespace().collect();
        assert_eq!(names.len(), 1, "the project's networks: {listed:?}");
        names[0].to_string()
    }

    /// The services' last log lines, for failure messages.
    fn logs(&self) -> String {
        let mut command = self.command();
        command.args(["logs", "--no-color", "--tail", "30"]);
        match command.output() {
            Ok(output) => format!(
                "compose logs:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => format!("no compose logs: {error}"),
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let mut command = self.command();
        command.args(["down", "-v", "--remove-orphans", "-t", "5"]);
        if let Err(error) = run(&mut command) {
            eprintln!("compose down of {} failed: {error}", self.name);
        }
    }
}

/// The three nodes of a running project, reached at their addresses on the
/// compose network.
struct Nodes {
    project: Project,
    network: String,
    containers: BTreeMap<u64, String>,
    agent: ureq::Agent,
}

impl Nodes {
    fn new(project: Project) -> Nodes {
        let network = project.network();
        let containers = NODES
            .iter()
            .map(|id| (*id, project.container(*id)))
            .collect();
        Nodes {
            project,
            network,
            containers,
            agent: ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build(),
        }
    }

    /// Node `id`'s address on the compose network, while it is connected
    /// (it may change across a reconnection, so it is looked up each time).
    fn ip(&self, id: u64) -> Option<String> {
        let networks = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{json .NetworkSettings.Networks}}",
            &self.containers[&id],
        ]))
        .expect("docker inspect");
        let networks: Value = serde_json::from_str(&networks).expect("networks JSON");
        networks[&self.network]["IPAddress"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .map(str::to_string)
    }

    /// Docker's health status of node `id` (from the compose healthcheck,
    /// `harmonydb cluster ready`).
    fn health(&self, id: u64) -> String {
        run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &self.containers[&id],
        ]))
        .map(|status| status.trim().to_string())
        .unwrap_or_else(|error| error)
    }

    /// `http://IP:8080PATH` for node `id`.
    fn url(&self, id: u64, path: &str) -> String {
        let ip = self
            .ip(id)
            .unwrap_or_else(|| panic!("node {id} has no address on {}", self.network));
        format!("http://{ip}:8080{path}")
    }

    /// Sends a request; status and JSON body, or None if no answer came.
    fn call(&self, request: ureq::Request, body: Option<Value>) -> Option<(u16, Value)> {
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(_)) => return None,
        };
        let status = response.status();
        let text = response.into_string().ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Node `id`'s view of the cluster, if it answers.
    fn status(&self, id: u64) -> Option<Value> {
        let ip = self.ip(id)?;
        let url = format!("http://{ip}:8080/cluster");
        match self.call(self.agent.get(&url), None) {
            Some((200, status)) => Some(status),
            _ => None,
        }
    }

    /// Waits until every node of `among` names the same leader, one of
    /// them, and returns it.
    fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.status(*id).and_then(|s| s["leader"].as_u64()))
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if among.contains(leader) && leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no agreed leader among {among:?} within {timeout:?}: {leaders:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// PUT through node `id`, retried while the answer is "try again"
    /// (no leader yet, unavailable, timed out); the version written.
    fn put(&self, id: u64, key: &str, value: &str) -> u64 {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            let answer = self.call(
                self.agent.put(&self.url(id, &format!("/kv/{key}"))),
                Some(json!({ "value": value })),
            );
            match answer {
                Some((200, body)) => return body["version"].as_u64().expect("version"),
                Some((503 | 504, _)) | None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => self.fail(&format!("PUT {key} through node {id}: {other:?}")),
            }
        }
    }

    /// GET through node `id` (`query` is the query string); value and version.
    fn get(&self, id: u64, key: &str, query: &str) -> (String, u64) {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            let answer = self.call(
                self.agent.get(&self.url(id, &format!("/kv/{key}{query}"))),
                None,
            );
            match answer {
                Some((200, body)) => {
                    let value = body["value"].as_str().expect("value").to_string();
                    return (value, body["version"].as_u64().expect("version"));
                }
                Some((503 | 504, _)) | None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => self.fail(&format!("GET {key}{query} through node {id}: {other:?}")),
            }
        }
    }

    /// Takes node `id`'s container off the compose network.
    fn disconnect(&self, id: u64) {
        run(Command::new("docker").args([
            "network",
            "disconnect",
            &self.network,
            &self.containers[&id],
        ]))
        .expect("docker network disconnect");
    }

    /// Puts node `id`'s container back on the compose network under its
    /// service name, which its peers address it by.
    fn connect(&self, id: u64) {
        run(Command::new("docker").args([
            "network",
            "connect",
            "--alias",
            &format!("harmonydb{id}"),
            &self.network,
            &self.containers[&id],
        ]))
        .expect("docker network connect");
    }

    /// Panics with `what`, every node's view and the services' logs.
    fn fail(&self, what: &str) -> ! {
        let views: Vec<String> = NODES
            .iter()
            .map(|id| match self.status(*id) {
                Some(status) => format!("node {id}: {status}"),
                None => format!("node {id}: no answer"),
            })
            .collect();
        panic!("{what}\n{}\n{}", views.join("\n"), self.project.logs());
    }
}

#[test]
fn compose_cluster_elects_a_new_leader_when_the_leader_is_cut_off_and_takes_it_back() {
    if let Some(reason) = unavailable_reason() {
        println!("SKIPPED compose cluster test: {reason}");
        return;
    }
    let started = Instant::now();
    let tool = compose_tool().expect("a compose tool (checked above)");
    println!("compose tool: {}", tool.join(" "));
    let unique = format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    // Dropped in reverse order: the project goes down before its image.
    let image = NodeImage::build(&format!("harmonydb-compose-test:{unique}"));
    let nodes = Nodes::new(Project::up(
        tool,
        format!("harmonydbtest{unique}"),
        &image.tag,
    ));

    let leader = nodes.wait_leader(&NODES, FIRST_LEADER_TIMEOUT);
    println!("leader: node {leader}");
    // The healthcheck (`cluster ready`) turns every node healthy once it
    // follows a live leader.
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    while NODES.iter().any(|id| nodes.health(*id) != "healthy") {
        if Instant::now() > deadline {
            let states: Vec<String> = NODES.iter().map(|id| nodes.health(*id)).collect();
            nodes.fail(&format!("nodes not healthy: {states:?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let version = nodes.put(1, "greeting", "hello from node 1");
    assert_eq!(
        nodes.get(3, "greeting", ""),
        ("hello from node 1".to_string(), version),
        "a linearizable read through node 3 sees the write through node 1"
    );
    let term_before = nodes.status(leader).expect("leader answers")["term"]
        .as_u64()
        .expect("term");

    nodes.disconnect(leader);
    let cut_at = Instant::now();
    let others: Vec<u64> = NODES.into_iter().filter(|id| *id != leader).collect();
    let new_leader = nodes.wait_leader(&others, CHANGE_TIMEOUT);
    assert_ne!(new_leader, leader);
    let term_after = nodes.status(new_leader).expect("new leader answers")["term"]
        .as_u64()
        .expect("term");
    assert!(
        term_after > term_before,
        "a new leader needs a new term: {term_before} then {term_after}"
    );
    println!(
        "node {leader} cut off; node {new_leader} leads in term {term_after} after {:.1} s",
        cut_at.elapsed().as_secs_f64()
    );
    let written = nodes.put(others[0], "while-cut", "written without the old leader");
    assert_eq!(
        nodes.get(others[1], "while-cut", ""),
        ("written without the old leader".to_string(), written)
    );
    assert_eq!(
        nodes.get(others[1], "greeting", ""),
        ("hello from node 1".to_string(), version),
        "the write from before the cut survives the change of leader"
    );

    nodes.connect(leader);
    let agreed = nodes.wait_leader(&NODES, CHANGE_TIMEOUT);
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        let applied = nodes
            .status(leader)
            .and_then(|s| s["applied_index"].as_u64())
            .unwrap_or(0);
        if applied >= written {
            break;
        }
        if Instant::now() > deadline {
            nodes.fail(&format!(
                "node {leader} did not apply up to {written} after reconnecting"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        nodes.get(leader, "while-cut", "?consistency=stale"),
        ("written without the old leader".to_string(), written),
        "the old leader's own state has the write it missed"
    );
    let back = nodes.put(leader, "after-reconnect", "through the old leader");
    assert!(back > written);
    for id in NODES {
        assert_eq!(
            nodes.get(id, "after-reconnect", ""),
            ("through the old leader".to_string(), back)
        );
    }
    println!(
        "node {leader} reconnected; node {agreed} leads; whole run {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
