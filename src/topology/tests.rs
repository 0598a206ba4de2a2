//! Parsing and validation of topology files.

use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[[queues]]
name = "work"
bind = ["a.*"]
"#;

fn parse(text: &str) -> Result<Topology, TopologyError> {
    Topology::parse(text, Path::new("topology/test.toml"), "")
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_shipped_topology_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_TOPOLOGY_FILE);
    let t = Topology::load(&path, "").unwrap();
    let names: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["pf.trading", "pf.payments", "pf.jobs"]);
    assert!(t.is_live_only("market.tick"));
    let trading = t.queue("pf.trading").unwrap();
    let lanes = trading.lanes.as_ref().expect("pf.trading is laned");
    assert_eq!(lanes.count, 8);
    assert_eq!(lanes.key.to_string(), "payload.pair");
    assert!(trading.lane_spec(3).single_active_consumer);
    assert_eq!(trading.lane_spec(3).name, "pf.trading.lane.3");
    assert_eq!(trading.lane_spec(3).dlq(), "pf.trading.dlq");
    // Wallet and escrow events must never expire: no queue TTL, ticks expire on their own.
    assert_eq!(trading.message_ttl, None);
    assert_eq!(t.live_ttl, Some(Duration::from_secs(30)));
    // The trader pauses on wallet.low_balance and resumes on escrow.released too.
    for rk in [
        "market.tick",
        "wallet.low_balance",
        "wallet.balance_changed",
        "escrow.released",
    ] {
        assert!(
            trading.bind.iter().any(|b| topic_matches(b, rk)),
            "pf.trading does not receive {rk}"
        );
    }
    assert!(trading.prefetch <= 10, "prefetch {}", trading.prefetch);
}

/// The books queue of `docker compose --profile postgres`: declared beside the default topology
/// on the same exchanges, every recorded type routed to it, ticks not.
#[test]
fn the_shipped_books_topology_shares_the_default_exchanges() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let main = Topology::load(&dir.join(DEFAULT_TOPOLOGY_FILE), "").unwrap();
    let books = Topology::load(&dir.join("topology/postgres.toml"), "").unwrap();
    assert_eq!(books.events_exchange, main.events_exchange);
    assert_eq!(books.dead_letter_exchange, main.dead_letter_exchange);
    let q = books.queue("pf.books").unwrap();
    for rk in [
        "market.candle",
        "wallet.balance_changed",
        "escrow.released",
        "escrow.disputed",
        "job.completed",
    ] {
        assert!(q.bind.iter().any(|b| topic_matches(b, rk)), "{rk}");
    }
    assert!(!q.bind.iter().any(|b| topic_matches(b, "market.tick")));
}

#[test]
fn defaults_apply_and_queues_override_them() {
    let t = parse(&format!(
        "{MINIMAL}\n[[queues]]\nname = \"other\"\nbind = [\"b.#\"]\nmax_attempts = 2\nretry_delays = [\"500ms\"]\n"
    ))
    .unwrap();
    let work = &t.queues[0];
    assert_eq!(work.max_attempts, 5);
    assert_eq!(work.queue_type, QueueType::Quorum);
    assert_eq!(work.delivery_limit, 10);
    assert_eq!(work.retry_delays.len(), 3);
    let other = &t.queues[1];
    assert_eq!(other.max_attempts, 2);
    assert_eq!(other.retry_delays, [Duration::from_millis(500)]);
    assert_eq!(
        other.retry_queue(Duration::from_millis(500)),
        "other.retry.500ms"
    );
}

#[test]
fn an_unknown_queue_field_names_file_queue_and_field() {
    let e = err(&format!("{MINIMAL}ttl = \"5s\"\n"));
    assert!(e.starts_with("topology/test.toml:"), "{e}");
    assert!(e.contains(": queue 'work': "), "{e}");
    assert!(e.contains("unknown field 'ttl'"), "{e}");
}

#[test]
fn a_delivery_limit_on_a_classic_queue_names_file_queue_and_field() {
    let e = err(&format!(
        "{MINIMAL}queue_type = \"classic\"\ndelivery_limit = 5\n"
    ));
    assert!(e.starts_with("topology/test.toml:"), "{e}");
    assert!(e.contains(": queue 'work': "), "{e}");
    assert!(e.contains("field 'delivery_limit'"), "{e}");
    assert!(e.contains("classic queue has no delivery limit"), "{e}");

    // Classic by default, the limit on the queue.
    let text = MINIMAL.replace(
        "[[queues]]",
        "[defaults]\nqueue_type = \"classic\"\n\n[[queues]]",
    );
    let e = err(&format!("{text}delivery_limit = 5\n"));
    assert!(e.starts_with("topology/test.toml:"), "{e}");
    assert!(e.contains(": queue 'work': "), "{e}");
    assert!(e.contains("field 'delivery_limit'"), "{e}");

    // Both in [defaults].
    let text = MINIMAL.replace(
        "[[queues]]",
        "[defaults]\nqueue_type = \"classic\"\ndelivery_limit = 5\n\n[[queues]]",
    );
    let e = err(&text);
    assert!(
        e.contains(": defaults.delivery_limit: [defaults]: field 'delivery_limit'"),
        "{e}"
    );

    // A quorum default limit does not apply to a queue that chooses classic: not an error.
    let text = MINIMAL.replace("[[queues]]", "[defaults]\ndelivery_limit = 5\n\n[[queues]]");
    let t = parse(&format!("{text}queue_type = \"classic\"\n")).unwrap();
    let plan = t.plan();
    let work = plan.queues.iter().find(|q| q.name == "work").unwrap();
    assert!(!work.arguments.contains_key("x-delivery-limit"));
}

#[test]
fn an_unknown_top_level_or_default_field_is_named() {
    let e = err(&format!("{MINIMAL}\n[defaults]\nprefech = 5\n"));
    assert!(e.contains("prefech"), "{e}");
    let e = err(&format!("colour = 1\n{MINIMAL}"));
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn bad_values_name_the_field() {
    for (extra, field) in [
        ("message_ttl = \"soon\"\n", "message_ttl"),
        ("prefetch = 0\n", "prefetch"),
        ("retry_delays = [\"10s\", \"1s\"]\n", "retry_delays"),
        ("bind = [\"a..b\"]\n", "bind"),
        ("max_attempts = 0\n", "max_attempts"),
        ("queue_type = \"stream\"\n", "stream"),
        ("expires = \"0s\"\n", "expires"),
    ] {
        let text = MINIMAL.replace("bind = [\"a.*\"]\n", "") + "bind = [\"a.*\"]\n";
        let text = if extra.starts_with("bind") {
            MINIMAL.replace("bind = [\"a.*\"]\n", extra)
        } else {
            text + extra
        };
        let e = err(&text);
        assert!(e.contains("queue 'work'"), "{extra} -> {e}");
        assert!(e.contains(field), "{extra} -> {e}");
    }
}

#[test]
fn duplicate_and_dangling_names_are_errors() {
    let e = err(&format!(
        "{MINIMAL}\n[[queues]]\nname = \"work\"\nbind = [\"b\"]\n"
    ));
    assert!(e.contains("'work' is used twice"), "{e}");
    let e = err(&format!(
        "[events]\nlive_only = [\"x.y\"]\nlive_ttl = \"1s\"\n{MINIMAL}"
    ));
    assert!(e.contains("'x.y' is not bound to any queue"), "{e}");
    let t = parse(MINIMAL).unwrap();
    let e = t.queue("nope").unwrap_err().to_string();
    assert!(
        e.contains("queue 'nope' is not in topology/test.toml (known queues: work)"),
        "{e}"
    );
}

#[test]
fn the_prefix_applies_to_every_name_but_not_to_binding_keys() {
    let t = Topology::parse(MINIMAL, Path::new("t.toml"), "t1.").unwrap();
    assert_eq!(t.events_exchange, "t1.ev");
    assert_eq!(t.queue("work").unwrap().name, "t1.work");
    assert_eq!(t.queue("t1.work").unwrap().dlq(), "t1.work.dlq");
    let plan = t.plan();
    assert!(plan.queues.iter().all(|q| q.name.starts_with("t1.")));
    assert!(plan.bindings.iter().any(|b| b.routing_key == "a.*"));
    assert!(
        plan.bindings
            .iter()
            .any(|b| b.routing_key == "t1.work" && b.queue == "t1.work.dlq")
    );
}

#[test]
fn work_queues_always_carry_a_dead_letter_exchange_and_a_delivery_limit() {
    let plan = parse(MINIMAL).unwrap().plan();
    let work = plan.queues.iter().find(|q| q.name == "work").unwrap();
    assert_eq!(
        work.arguments["x-dead-letter-exchange"],
        Arg::Str("ev.dlx".into())
    );
    assert_eq!(work.arguments["x-delivery-limit"], Arg::Int(10));
    assert_eq!(
        work.arguments["x-dead-letter-strategy"],
        Arg::Str("at-least-once".into())
    );
    assert_eq!(
        work.arguments["x-overflow"],
        Arg::Str("reject-publish".into())
    );
    let tier = plan
        .queues
        .iter()
        .find(|q| q.name == "work.retry.10s")
        .unwrap();
    assert_eq!(tier.arguments["x-message-ttl"], Arg::Int(10_000));
    assert_eq!(
        tier.arguments["x-dead-letter-exchange"],
        Arg::Str(String::new())
    );
    assert_eq!(
        tier.arguments["x-dead-letter-routing-key"],
        Arg::Str("work".into())
    );
    let dlq = plan.queues.iter().find(|q| q.name == "work.dlq").unwrap();
    assert_eq!(dlq.arguments["x-queue-type"], Arg::Str("classic".into()));
    assert!(plan.queues.iter().any(|q| q.name == "ev.dlq"));
}

#[test]
fn tiers_are_chosen_by_requested_delay() {
    let t = parse(MINIMAL).unwrap();
    let q = &t.queues[0];
    assert_eq!(q.tier_for(Duration::ZERO), Some(Duration::from_secs(1)));
    assert_eq!(
        q.tier_for(Duration::from_secs(2)),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        q.tier_for(Duration::from_secs(600)),
        Some(Duration::from_secs(60))
    );
}

#[test]
fn topic_matching_follows_rabbitmq() {
    assert!(topic_matches("market.*", "market.tick"));
    assert!(!topic_matches("market.*", "market.tick.x"));
    assert!(topic_matches("escrow.#", "escrow.released"));
    assert!(topic_matches("#", "a.b"));
    assert!(topic_matches(
        "wallet.balance_changed",
        "wallet.balance_changed"
    ));
    assert!(!topic_matches("job.#", "jobs.x"));
}

#[test]
fn definitions_export_lists_every_object() {
    let plan = parse(MINIMAL).unwrap().plan();
    let d = plan.definitions("/");
    assert_eq!(d["exchanges"].as_array().unwrap().len(), 3);
    assert_eq!(
        d["exchanges"][0]["arguments"]["alternate-exchange"],
        "ev.unrouted"
    );
    assert_eq!(d["exchanges"][2]["type"], "fanout");
    assert!(
        d["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "ev.unrouted")
    );
    assert_eq!(d["queues"].as_array().unwrap().len(), plan.queues.len());
    assert_eq!(d["queues"][0]["arguments"]["x-delivery-limit"], 10);
    assert_eq!(d["bindings"].as_array().unwrap().len(), plan.bindings.len());
}

fn laned(fields: &str) -> String {
    format!(
        r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[events]
live_only = ["m.tick"]
live_ttl = "30s"

[[queues]]
name = "trading"
bind = ["m.*", "w.*"]
{fields}
"#
    )
}

#[test]
fn bad_lanes_name_the_file_the_queue_and_the_field() {
    for (fields, wanted) in [
        ("lanes = 0", "field 'lanes': 0 lanes: at least 1"),
        ("lanes = -3", "field 'lanes': -3 lanes: at least 1"),
        ("lanes = 1025", "field 'lanes': 1025 lanes: at most 1024"),
        (
            "lanes = 4\nlane_key = \"pair\"",
            "field 'lane_key': 'pair' is not a lane key",
        ),
        (
            "lanes = 4\nlane_key = \"payload..pair\"",
            "field 'lane_key': 'payload..pair' is not a lane key",
        ),
        (
            "lanes = 4\nqueue_type = \"classic\"",
            "field 'lanes': lanes are quorum queues",
        ),
        (
            "lanes = 4\nsingle_active_consumer = true",
            "field 'single_active_consumer'",
        ),
        (
            "lane_key = \"payload.pair\"",
            "field 'lane_key': only for a laned queue",
        ),
    ] {
        let e = err(&laned(fields));
        assert!(e.starts_with("topology/test.toml:"), "{fields}: {e}");
        assert!(e.contains("queue 'trading'"), "{fields}: {e}");
        assert!(e.contains(wanted), "{fields}: {e}");
    }
}

#[test]
fn a_queue_ttl_is_refused_on_a_queue_that_binds_more_than_live_only_types() {
    let e = err(&laned("message_ttl = \"30s\""));
    assert!(e.starts_with("topology/test.toml:"), "{e}");
    assert!(e.contains("queue 'trading': field 'message_ttl'"), "{e}");
    assert!(e.contains("'m.*', 'w.*'"), "{e}");
    let only_ticks = laned("message_ttl = \"30s\"").replace(r#"["m.*", "w.*"]"#, r#"["m.tick"]"#);
    assert_eq!(
        parse(&only_ticks).unwrap().queues[0].message_ttl,
        Some(Duration::from_secs(30))
    );
}

#[test]
fn a_laned_queue_plans_its_lanes_split_exchange_roster_and_dlq() {
    let t = parse(&laned("lanes = 3\nlane_key = \"payload.pair\"")).unwrap();
    let plan = t.plan();
    let lane_queues: Vec<&str> = plan
        .queues
        .iter()
        .filter(|q| q.role == plan::QueueRole::Lane)
        .map(|q| q.name.as_str())
        .collect();
    assert_eq!(
        lane_queues,
        ["trading.lane.0", "trading.lane.1", "trading.lane.2"]
    );
    let lane0 = plan
        .queues
        .iter()
        .find(|q| q.name == "trading.lane.0")
        .unwrap();
    assert_eq!(
        lane0.arguments["x-single-active-consumer"],
        plan::Arg::Bool(true)
    );
    assert_eq!(
        lane0.arguments["x-queue-type"],
        plan::Arg::Str("quorum".into())
    );
    assert_eq!(
        lane0.arguments["x-dead-letter-routing-key"],
        plan::Arg::Str("trading.lane.0".into())
    );
    assert!(!lane0.arguments.contains_key("x-message-ttl"));
    assert!(plan.queues.iter().any(|q| q.name == "trading.dlq"));
    assert!(
        !plan.queues.iter().any(|q| q.name == "trading"),
        "no plain queue"
    );
    assert!(
        !plan.queues.iter().any(|q| q.name.contains(".retry.")),
        "no tiers"
    );
    let kinds: Vec<(&str, &str)> = plan
        .exchanges
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    for want in [
        ("trading.lanes", "headers"),
        ("trading.lanes.unkeyed", "fanout"),
        ("trading.roster", "fanout"),
    ] {
        assert!(kinds.contains(&want), "{want:?} in {kinds:?}");
    }
    let split = plan
        .exchanges
        .iter()
        .find(|e| e.name == "trading.lanes")
        .unwrap();
    assert_eq!(
        split.arguments["alternate-exchange"],
        plan::Arg::Str("trading.lanes.unkeyed".into())
    );
    let e2e: Vec<&str> = plan
        .bindings
        .iter()
        .filter(|b| b.to_exchange)
        .map(|b| b.routing_key.as_str())
        .collect();
    assert_eq!(e2e, ["m.*", "w.*"]);
    let lane2 = plan
        .bindings
        .iter()
        .find(|b| b.exchange == "trading.lanes" && b.queue == "trading.lane.2")
        .unwrap();
    assert_eq!(
        lane2.arguments["x-warren-lane.trading"],
        plan::Arg::Str("2".into())
    );
    assert_eq!(
        lane2.arguments["x-match"],
        plan::Arg::Str("all-with-x".into())
    );
    assert_eq!(plan.laned.len(), 1);
    let defs = plan.definitions("/");
    assert!(
        defs["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["destination_type"] == "exchange" && b["destination"] == "trading.lanes")
    );
}

#[test]
fn an_event_gets_its_lane_header_only_from_laned_queues_that_bind_it() {
    let t = parse(&laned("lanes = 8\nlane_key = \"payload.pair\"")).unwrap();
    let event = |t: &str, payload: &str| {
        crate::envelope::Envelope::parse(
            format!(
                r#"{{"eventId":"01JNQ2X6Y3S8V4W5Z7A9B1C2D3","type":"{t}","agentId":"a","payload":{payload},"ts":1}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(
        t.lane_headers(&event("m.tick", r#"{"pair":"BTC-USD"}"#)),
        [("x-warren-lane.trading".to_string(), "5".to_string())]
    );
    assert!(
        t.lane_headers(&event("w.low", r#"{"x":1}"#)).is_empty(),
        "no key: every lane"
    );
    assert!(
        t.lane_headers(&event("j.done", r#"{"pair":"BTC-USD"}"#))
            .is_empty(),
        "not bound"
    );
}

#[test]
fn quorum_initial_group_size_places_quorum_queues_and_their_tiers() {
    let args = |text: &str, name: &str| {
        let plan = parse(text).unwrap().plan();
        plan.queues
            .iter()
            .find(|q| q.name == name)
            .unwrap()
            .arguments
            .get("x-quorum-initial-group-size")
            .cloned()
    };
    assert_eq!(args(MINIMAL, "work"), None, "not set: the broker's default");
    let text = MINIMAL.replace(
        "[[queues]]",
        "[defaults]\nquorum_initial_group_size = 3\n\n[[queues]]",
    );
    assert_eq!(args(&text, "work"), Some(plan::Arg::Int(3)));
    assert_eq!(args(&text, "work.retry.1s"), Some(plan::Arg::Int(3)));
    assert_eq!(args(&text, "work.dlq"), None, "a DLQ is a classic queue");
    let own = format!("{text}quorum_initial_group_size = 1\n");
    assert_eq!(args(&own, "work"), Some(plan::Arg::Int(1)));
    // A quorum default does not reach a queue that chooses classic.
    let classic = format!("{text}queue_type = \"classic\"\n");
    assert_eq!(args(&classic, "work"), None);
    let laned = format!("{text}lanes = 2\n");
    assert_eq!(args(&laned, "work.lane.1"), Some(plan::Arg::Int(3)));
}

#[test]
fn a_bad_quorum_initial_group_size_names_file_line_and_field() {
    let e = err(&format!("{MINIMAL}quorum_initial_group_size = 0\n"));
    assert!(
        e.starts_with(
            "topology/test.toml:9:29: queues[0].quorum_initial_group_size: queue 'work': \
             field 'quorum_initial_group_size': must be at least 1"
        ),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}quorum_initial_group_size = -2\n"));
    assert!(e.starts_with("topology/test.toml:9:"), "{e}");
    assert!(
        e.contains("queue 'work'") && e.contains("quorum_initial_group_size"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}queue_type = \"classic\"\nquorum_initial_group_size = 3\n"
    ));
    assert!(e.starts_with("topology/test.toml:10:"), "{e}");
    assert!(
        e.contains("field 'quorum_initial_group_size': a classic queue"),
        "{e}"
    );
    let text = MINIMAL.replace(
        "[[queues]]",
        "[defaults]\nquorum_initial_group_size = 0\n\n[[queues]]",
    );
    let e = err(&text);
    assert!(
        e.contains(": defaults.quorum_initial_group_size: [defaults]: field"),
        "{e}"
    );
}
