//! The broker side of the reliability harness: `rabbitmqctl`, putting the broker back after a
//! fault, and the canary user whose password must never reach a log.

/// Runs `rabbitmqctl`; Err carries stderr.
pub fn ctl(args: &[&str]) -> Result<String, String> {
    let out = crate::support::node::ctl_command()
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Puts the broker back the way every other test expects it: running, configured watermark.
pub fn restore_broker() {
    let _ = ctl(&["start_app"]);
    let _ = ctl(&["await_startup"]);
    if let Err(e) = ctl(&["eval", crate::support::RESTORE_WATERMARK]) {
        eprintln!("could not restore the memory watermark: {e}");
    }
}

/// Switches the test to the suite's throwaway node (the faults stop, block and close it),
/// and restores it when dropped, on success and on panic alike.
pub struct BrokerGuard {
    _node: crate::support::node::NodeGuard,
}

impl BrokerGuard {
    /// Restores first, in case an earlier run crashed mid-fault.
    pub fn new() -> Self {
        let node = crate::support::node::use_throwaway_node();
        restore_broker();
        Self { _node: node }
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        restore_broker();
    }
}

/// A dedicated broker user with a recognizable password, and a recognizable agent key. The
/// user is deleted when dropped.
pub struct Canary {
    pub user: String,
    pub password: String,
    pub agent_key: String,
}

impl Canary {
    pub fn create() -> Self {
        let suffix = ulid::Ulid::generate().to_string().to_lowercase();
        let c = Self {
            user: format!("warren_canary_{suffix}"),
            password: format!("canary-pw-{suffix}-Zq7"),
            agent_key: format!("pf_live_canarykey_{suffix}"),
        };
        ctl(&["add_user", &c.user, &c.password]).expect("add canary user");
        ctl(&["set_permissions", "-p", "/", &c.user, ".*", ".*", ".*"])
            .expect("canary permissions");
        c
    }

    /// An AMQP URL with the canary credentials.
    pub fn url(&self, host_port: &str, heartbeat: u16) -> String {
        format!(
            "amqp://{}:{}@{host_port}/%2f?heartbeat={heartbeat}",
            self.user, self.password
        )
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = ctl(&["delete_user", &self.user]);
    }
}
