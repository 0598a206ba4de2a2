//! Parsing, defaults, redaction and node order of broker URLs.

use super::*;

#[test]
fn password_never_shows() {
    let url: AmqpUrl = "amqp://bob:s3cr3t-canary@broker:5672/%2f".parse().unwrap();
    for shown in [
        format!("{url}"),
        format!("{url:?}"),
        url.redacted().to_string(),
    ] {
        assert!(!shown.contains("s3cr3t-canary"), "{shown}");
        assert!(shown.contains("bob:***@broker"), "{shown}");
    }
}

#[test]
fn parse_errors_hide_the_password() {
    for bad in [
        "http://bob:s3cr3t-canary@broker/",
        "amqp://bob:s3cr3t-canary@broker:notaport/",
        "amqp://bob:s3cr3t-canary@broker/%2f?heartbeat=abc",
    ] {
        let err = bad.parse::<AmqpUrl>().unwrap_err().to_string();
        assert!(!err.contains("s3cr3t-canary"), "{err}");
    }
}

#[test]
fn defaults_apply_unless_the_url_sets_them() {
    let url: AmqpUrl = DEFAULT_AMQP_URL.parse().unwrap();
    assert_eq!(url.heartbeat_secs(), DEFAULT_HEARTBEAT_SECS);
    let url: AmqpUrl = "amqp://guest:guest@h/%2f?heartbeat=3".parse().unwrap();
    assert_eq!(url.heartbeat_secs(), 3);
}

#[test]
fn an_ipv6_literal_host_is_the_host_connected_to() {
    let url: AmqpUrl = "amqp://bob:pw@[fd00::5]:5673/%2f".parse().unwrap();
    assert_eq!(url.uri().authority.host, "fd00::5");
    assert_eq!(url.host_port(), "[fd00::5]:5673");
    let url: AmqpUrl = "amqp://bob:pw@10.1.2.3/%2f".parse().unwrap();
    assert_eq!(url.uri().authority.host, "10.1.2.3");
    assert_eq!(url.host_port(), "10.1.2.3:5672");
}

#[test]
fn heartbeats_cannot_be_turned_off() {
    let err = "amqp://bob:s3cr3t-canary@h/%2f?heartbeat=0"
        .parse::<AmqpUrl>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("'heartbeat' parameter is 0"), "{err}");
    assert!(!err.contains("s3cr3t-canary"), "{err}");
    assert!(
        "amqp://guest:guest@h/%2f?heartbeat=1"
            .parse::<AmqpUrl>()
            .is_ok()
    );
}

#[test]
fn a_list_names_every_node_and_later_nodes_may_give_host_and_port_alone() {
    let url: AmqpUrl =
        "amqp://bob:s3cr3t-canary@n1:5672/%2f?heartbeat=3, n2:5673,amqp://al:pw2-canary@n3/%2f,[fd00::7]"
            .parse()
            .unwrap();
    let nodes: Vec<String> = url.nodes().iter().map(Node::host_port).collect();
    assert_eq!(nodes, ["n1:5672", "n2:5673", "n3:5672", "[fd00::7]:5672"]);
    // A bare host takes the first node's user, password, vhost and options.
    let n2 = url.nodes()[1].uri();
    assert_eq!(n2.authority.userinfo.password, "s3cr3t-canary");
    assert_eq!(n2.query.heartbeat, Some(3));
    assert_eq!(url.nodes()[3].uri().authority.host, "fd00::7");
    assert_eq!(url.nodes()[2].uri().authority.userinfo.username, "al");
    for shown in [
        format!("{url}"),
        format!("{url:?}"),
        url.redacted().to_string(),
        format!("{:?}", url.nodes()),
    ] {
        assert!(!shown.contains("canary"), "{shown}");
        assert!(
            shown.contains("bob:***@n1") && shown.contains("al:***@n3"),
            "{shown}"
        );
    }
    let tls: AmqpUrl = "amqps://u:p@a.example/%2f,b.example".parse().unwrap();
    assert_eq!(tls.nodes()[1].host_port(), "b.example:5671");
}

#[test]
fn a_bad_entry_names_its_place_and_hides_every_password() {
    for (bad, says) in [
        ("amqp://bob:s3cr3t-canary@n1/%2f,", "node 2 of 2 is empty"),
        ("amqp://bob:s3cr3t-canary@n1/%2f,n2/other", "node 2 of 2"),
        (
            "amqp://bob:s3cr3t-canary@n1/%2f,u:s3cr3t-canary@n2",
            "node 2 of 2",
        ),
        (
            "amqp://bob:s3cr3t-canary@n1/%2f,amqp://bob:s3cr3t-canary@n2/v2",
            "virtual host",
        ),
        ("amqp://bob:s3cr,3t-canary@n1/%2f", "node 1 of 2"),
        (
            "amqp://bob:s3cr3t-canary@n1/%2f,http://x:s3cr3t-canary@n2/",
            "scheme",
        ),
    ] {
        let err = bad.parse::<AmqpUrl>().unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
        assert!(!err.contains("3t-canary"), "{err}");
        let shown = redact(bad);
        assert!(!shown.contains("3t-canary"), "{shown}");
    }
    assert_eq!(
        redact("amqp://bob:pw@n1/%2f,n2:5673,amqp://al:pw@n3"),
        "amqp://bob:***@n1/%2f,n2:5673,amqp://al:***@n3"
    );
    // A comma inside a password: the rest of the list is hidden, not shown as a host.
    let shown = redact("amqp://bob:pw@n1/%2f,amqp://al:a,b:1,c@n3");
    assert_eq!(shown, "amqp://bob:***@n1/%2f,<unparseable URL>");
}

#[test]
fn the_node_that_answered_goes_first_and_one_that_failed_goes_last() {
    let url: AmqpUrl = "amqp://u:p@n1/%2f,n2,n3".parse().unwrap();
    assert_eq!(url.candidates(), [0, 1, 2]);
    url.failed(0);
    assert_eq!(url.candidates(), [1, 2, 0]);
    let clone = url.clone();
    clone.answered(2);
    assert_eq!(url.candidates(), [2, 1, 0]);
    url.failed(2);
    url.failed(1);
    assert_eq!(url.candidates(), [2, 0, 1], "all failed: the usual order");
    url.answered(0);
    assert_eq!(url.candidates(), [0, 1, 2]);
}
