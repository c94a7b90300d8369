//! Past one machine, the database too: a PostgreSQL primary and its synchronous standby,
//! every service given both hosts (`…@p1,p2/db?target_session_attrs=read-write`). Jobs are
//! created through two notifiers (their webhooks duplicated, reordered, failing and
//! cancelled) and watched by a browser on each notifier for every user; two workers apply
//! them. Under that load the primary is killed (`kill -9` of the postmaster and every
//! backend), the standby promoted, and later the old primary rewound and brought back as
//! the new standby; then the same again the other way. Then the chaos oracle: every job in
//! the state the simulator decided, refunds once, credits balancing, every browser with
//! each of its user's events once in `seq` order, the queues drained.
//!
//! `deploy/pg-failover` runs it: it starts the pair, names its control script in `PG_PAIR`
//! (`deploy/lib/postgres-pair`) and its multi-host URL in `DATABASE_URL`. Jobs are created
//! `PG_FAILOVER_RATE` a second (default 10).

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
/// How long the failover manager (Patroni, CloudNativePG, a managed service) takes to
/// decide the primary is gone before it promotes the standby: the pipeline is without a
/// writable database at least this long.
const DETECTION: Duration = Duration::from_secs(1);

/// The pair's control script (`deploy/lib/postgres-pair`).
struct Pair(ControlScript);

impl Pair {
    fn from_env() -> Self {
        Self(ControlScript::from_env("PG_PAIR", "deploy/pg-failover"))
    }

    fn run(&self, args: &[&str]) -> String {
        self.0.run(args)
    }

    /// The node accepting writes (`p1` or `p2`).
    fn primary(&self) -> String {
        self.run(&["primary"])
    }
}

/// The other node of the pair.
fn other(node: &str) -> &'static str {
    if node == "p1" { "p2" } else { "p1" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the PostgreSQL pair deploy/pg-failover starts"]
async fn losing_the_primary_database_under_load_loses_nothing() {
    let pair = Pair::from_env();
    let rate = rate_from_env("PG_FAILOVER_RATE", 10.0);
    let started = Instant::now();
    let shape = Shape {
        ingests: 1,
        workers: 2,
        notifiers: 2,
        amqp_nodes: &[],
    };
    // Replicate answers creations 400 ms late: creations are under way at Replicate when
    // the primary dies, and must store its answer on the new one.
    let replicate: Vec<&str> = [FAULTY_REPLICATE, &["--create-delay-ms", "400"]].concat();
    let pipeline = Pipeline::start_shaped(&replicate, shape, FAULT_RUN_SETTINGS).await;
    let audience = Audience::gather(&pipeline, "pg-failover", USERS, START_CREDITS).await;
    let (creations, creating) = Creations::start(
        audience.clients.clone(),
        Vec::new(),
        audience.users.clone(),
        rate,
    );
    let mut faults: Vec<String> = Vec::new();
    let mut promotions: Vec<String> = Vec::new();
    let moment = || tokio::time::sleep(Duration::from_secs(4));

    // Twice: the primary killed, the standby promoted, the old primary back as its standby.
    for _ in 0..2 {
        moment().await;
        let primary = pair.primary();
        let standby = other(&primary);
        let killed = Instant::now();
        pair.run(&["kill", &primary]);
        faults.push(format!(
            "kill -9 {primary}, the primary (postmaster and backends)"
        ));
        tokio::time::sleep(DETECTION).await;
        pair.run(&["promote", standby]);
        promotions.push(format!(
            "{standby}: {} ms after the kill",
            killed.elapsed().as_millis()
        ));
        faults.push(format!("promote {standby}"));
        moment().await;
        pair.run(&["rejoin", &primary]);
        faults.push(format!(
            "{primary} rewound, back as {standby}'s synchronous standby"
        ));
    }

    moment().await;
    let (decided, mut verdict) = audience
        .judge(&pipeline, &creations, creating, START_CREDITS)
        .await;
    let status = pair.run(&["status"]);
    if !status.contains("streaming sync") {
        (verdict.mismatches).push(format!(
            "the pair ends without a synchronous standby: {status}"
        ));
    }
    let programs: Vec<String> = (0..2)
        .map(|i| format!("worker-{i}"))
        .chain((0..2).map(|i| replica_name("notifier", i)))
        .collect();
    let logs = Logs::read(&pipeline, &programs);
    // The reconciler's lead moves with the database: taken once at start, again after each
    // failover (its session died with the primary).
    let leads = logs.count("this worker reconciles unfinished jobs with Replicate");
    if leads < 1 + promotions.len() {
        (verdict.mismatches).push(format!(
            "the reconciler's lead was taken {leads} times over {} failovers",
            promotions.len()
        ));
    }
    // The console's record of every handling, the failed ones included, kept through it.
    let dropped = logs.count("webhook record rows not written");
    if dropped > 0 {
        (verdict.mismatches).push(format!(
            "the workers dropped webhook record rows {dropped} times"
        ));
    }
    let reconnects = audience.reconnects();

    let mut report = RunReport::new(&pipeline, &decided, &creations).await;
    report.faults(&faults);
    for promotion in &promotions {
        report.row("standby promoted", promotion);
    }
    report.failovers(
        logs.failovers("connected to PostgreSQL again"),
        |program| format!("{program}: without a writable database for"),
        "none",
    );
    report.row(
        "creations that waited out a failover to store Replicate's answer",
        logs.distinct("cannot store Replicate's answer yet; trying again", "id"),
    );
    report.row(
        "reconciler leads taken (start, then after each failover)",
        leads,
    );
    report.row("the pair at the end", status.replace('\n', "; "));
    report.verdict(reconnects, &verdict);
    report.print(&format!(
        "PostgreSQL failover run: primary + synchronous standby, 1 ingest, 2 workers, 2 notifiers, 2 browsers per user ({:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    audience.leave();
    verdict.assert_clean(creations.created(), pipeline.logs.display());
    // Every service moved to the new primary and said how long it took.
    for (program, times) in logs.failovers("connected to PostgreSQL again") {
        assert!(
            !times.is_empty(),
            "{program} never logged its reconnection; logs in {}",
            pipeline.logs.display()
        );
    }
    pipeline.stop().await;
}
