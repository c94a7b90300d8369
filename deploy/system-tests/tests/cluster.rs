//! Past one machine: a 3-node RabbitMQ cluster, two ingests, three workers and two
//! notifiers, each given every node. Jobs are created through both notifiers (so their
//! webhooks arrive at both ingests, duplicated, reordered, failing and cancelled) and
//! watched by a browser on each notifier for every user. Under that load the leader node
//! of `replicate.webhooks` is killed and later restarted, the node a notifier is on is
//! killed and restarted, and one ingest is SIGKILLed. Then the chaos oracle: every job in
//! the state the simulator decided, refunds once, credits balancing, every browser with
//! each of its user's events once in `seq` order, the queues drained.
//!
//! `deploy/cluster` runs it: it starts the cluster and names it in `RABBITMQ_CLUSTER` (the
//! control script) and `CLUSTER_AMQP_NODES` (the nodes' URLs, space separated). Jobs are
//! created `CLUSTER_RATE` a second (default 10).

mod common;

use std::time::{Duration, Instant};

use common::audience::{Audience, FAULT_RUN_SETTINGS};
use common::control::ControlScript;
use common::creations::{Creations, rate_from_env};
use common::logs::Logs;
use common::report::RunReport;
use common::{FAULTY_REPLICATE, Pipeline, Shape, replica_name};

const USERS: usize = 8;
const START_CREDITS: i32 = 1_000_000;
const NODES: [&str; 3] = ["r1", "r2", "r3"];

/// The cluster's control script (`deploy/lib/rabbitmq-cluster`).
struct Cluster(ControlScript);

impl Cluster {
    fn from_env() -> Self {
        Self(ControlScript::from_env(
            "RABBITMQ_CLUSTER",
            "deploy/cluster",
        ))
    }

    fn try_run(&self, args: &[&str]) -> Option<String> {
        self.0.try_run(args)
    }

    fn run(&self, args: &[&str]) -> String {
        self.0.run(args)
    }

    /// The node leading a quorum queue.
    fn leader(&self, queue: &str) -> String {
        self.run(&["leader", queue])
    }

    fn kill(&self, node: &str) {
        self.run(&["kill", node]);
    }

    fn restart(&self, node: &str) {
        self.run(&["restart", node]);
    }

    /// The queues whose names start with `prefix`, each with its type and how many of its
    /// replicas are online, as the first node that answers reports them.
    fn queues(&self, prefix: &str) -> Vec<(String, String, usize)> {
        let listing = NODES
            .iter()
            .find_map(|asked| {
                self.try_run(&[
                    "ctl",
                    asked,
                    "-q",
                    "list_queues",
                    "name",
                    "type",
                    "online",
                    "--no-table-headers",
                ])
            })
            .expect("a node lists the queues");
        listing
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let (name, kind, online) = (fields.next()?, fields.next()?, fields.next()?);
                let online = online.matches("@localhost").count();
                name.starts_with(prefix)
                    .then(|| (name.to_owned(), kind.to_owned(), online))
            })
            .collect()
    }

    /// The node a process's broker connection is on, from the connection's name (which
    /// ends with the process id, in the client properties) and the port it connected to
    /// (5701 is r1, …).
    fn node_of(&self, pid: u32) -> Option<String> {
        let named = format!(" pid {pid}\"");
        NODES.iter().find_map(|asked| {
            let listing = self.try_run(&[
                "ctl",
                asked,
                "-q",
                "list_connections",
                "client_properties",
                "port",
                "--no-table-headers",
            ])?;
            listing.lines().find_map(|line| {
                let (properties, port) = line.rsplit_once('\t')?;
                if !properties.contains(&named) {
                    return None;
                }
                let port: u16 = port.trim().parse().ok()?;
                Some(format!("r{}", port.checked_sub(5700)?))
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the 3-node RabbitMQ cluster deploy/cluster starts"]
async fn losing_a_broker_node_or_an_ingest_under_load_loses_nothing() {
    let cluster = Cluster::from_env();
    let nodes: Vec<String> = std::env::var("CLUSTER_AMQP_NODES")
        .expect("CLUSTER_AMQP_NODES lists the cluster's nodes (deploy/cluster)")
        .split_whitespace()
        .map(|url| format!("{url}?heartbeat=5"))
        .collect();
    let rate = rate_from_env("CLUSTER_RATE", 10.0);
    let started = Instant::now();
    let shape = Shape {
        ingests: 2,
        workers: 3,
        notifiers: 2,
        amqp_nodes: &nodes,
    };
    let mut pipeline = Pipeline::start_shaped(FAULTY_REPLICATE, shape, FAULT_RUN_SETTINGS).await;
    let audience = Audience::gather(&pipeline, "cluster", USERS, START_CREDITS).await;
    let (creations, creating) = Creations::start(
        audience.clients.clone(),
        Vec::new(),
        audience.users.clone(),
        rate,
    );
    let mut faults: Vec<String> = Vec::new();
    let moment = || tokio::time::sleep(Duration::from_secs(4));

    // The leader of the work queue's replicas killed as a crash, restarted later.
    moment().await;
    let work_queue = format!("{}replicate.webhooks", pipeline.prefix);
    let leader = cluster.leader(&work_queue);
    cluster.kill(&leader);
    faults.push(format!("kill -9 {leader}, leader of replicate.webhooks"));
    moment().await;
    let new_leader = cluster.leader(&work_queue);
    cluster.restart(&leader);
    faults.push(format!(
        "restart {leader} (the queue's leader meanwhile: {new_leader})"
    ));

    // The node the second notifier is on killed, restarted later.
    moment().await;
    let notifier = replica_name("notifier", 1);
    let pid = pipeline.pid(&notifier).expect("the notifier runs");
    // Asked until it answers: the notifier may be between two nodes right now.
    let mut node = None;
    let found = shared::testing::eventually(Duration::from_secs(15), || {
        node = cluster.node_of(pid);
        std::future::ready(node.is_some())
    })
    .await;
    assert!(
        found.is_ok(),
        "{notifier} (pid {pid}) has no broker connection"
    );
    let node = node.expect("found");
    cluster.kill(&node);
    faults.push(format!("kill -9 {node}, the node {notifier} was on"));
    moment().await;
    cluster.restart(&node);
    faults.push(format!("restart {node}"));

    // One ingest SIGKILLed and started again; Replicate retries what it refused.
    moment().await;
    let ingest = replica_name("ingest", 1);
    pipeline.kill(&ingest).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pipeline.restart(&ingest);
    pipeline
        .wait_healthy(
            &ingest,
            &format!("http://{}/api/health", pipeline.ingests[1]),
        )
        .await;
    faults.push(format!("SIGKILL {ingest}, started again 1 s later"));

    moment().await;
    let (decided, mut verdict) = audience
        .judge(&pipeline, &creations, creating, START_CREDITS)
        .await;
    // Every queue on all three nodes again, the restarted ones caught up.
    let queues = cluster.queues(&pipeline.prefix);
    let replicated = queues
        .iter()
        .filter(|(_, kind, online)| kind == "quorum" && *online == 3)
        .count();
    if queues.len() != 7 || replicated != queues.len() {
        (verdict.mismatches).push(format!("queues not quorum on 3 nodes: {queues:?}"));
    }
    let reconnects = audience.reconnects();
    let programs: Vec<String> = (0..2)
        .map(|i| replica_name("ingest", i))
        .chain((0..3).map(|i| format!("worker-{i}")))
        .chain((0..2).map(|i| replica_name("notifier", i)))
        .collect();
    let logs = Logs::read(&pipeline, &programs);

    let mut report = RunReport::new(&pipeline, &decided, &creations).await;
    report.row(
        "webhooks answered 503 by an ingest (no confirm from the broker)",
        logs.ingest_lines("webhook not enqueued"),
    );
    report.row(
        "publishes repeated by an ingest on a rebuilt broker link",
        logs.ingest_lines("published again on a rebuilt broker link"),
    );
    let answers = logs.ingest_answer_times();
    let quantile = |q: f64| {
        answers
            .get(((answers.len() as f64 * q) as usize).min(answers.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    report.row(
        "ingest answer time of accepted webhooks, p50 / p99 / max",
        format!(
            "{:.1} / {:.1} / {:.0} ms",
            quantile(0.5),
            quantile(0.99),
            answers.last().copied().unwrap_or_default()
        ),
    );
    report.faults(&faults);
    report.failovers(
        logs.failovers("connected to RabbitMQ again"),
        |program| format!("failovers seen by {program}"),
        "none (its node stayed up)",
    );
    report.row(
        "queues quorum with 3 replicas online at the end",
        format!("{replicated} of {}", queues.len()),
    );
    report.verdict(reconnects, &verdict);
    report.print(&format!(
        "cluster run: 3 RabbitMQ nodes, 2 ingests, 3 workers, 2 notifiers, 2 browsers per user ({:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    audience.leave();
    verdict.assert_clean(creations.created(), pipeline.logs.display());
    pipeline.stop().await;
}
