//! The systemd notify protocol (`sd_notify(3)`), spoken directly: datagrams of `KEY=VALUE`
//! lines to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.
//!
//! The watchdog: with `$WATCHDOG_USEC` set (and `$WATCHDOG_PID` unset or equal to our pid),
//! `WATCHDOG=1` is sent every half period, but only after the Coordinator has confirmed
//! that every watched actor answers; a wedged actor stops the pings and systemd restarts us.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use actix::Addr;
use sessiond_actors::coordinator::Coordinator;
use sessiond_actors::domain::EventKind;
use sessiond_actors::health::{ANSWER_TIMEOUT, CheckLiveness};
use sessiond_actors::messages::Deliver;

/// Where notifications go; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Clone, Debug)]
enum Target {
    Path(PathBuf),
    #[cfg(target_os = "linux")]
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a no-op notifier when it is unset or empty.
    pub fn from_env() -> Notifier {
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Notifier::default();
        };
        let raw = raw.to_string_lossy().into_owned();
        let target = match raw.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            #[cfg(not(target_os = "linux"))]
            Some(_) => return Notifier::default(),
            None => Target::Path(PathBuf::from(raw)),
        };
        Notifier { target: Some(target) }
    }

    /// Whether a notify socket is configured.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (e.g. `"READY=1\nSTATUS=serving"`); failures are logged once at
    /// debug level and otherwise ignored, as sd_notify does.
    pub fn send(&self, state: &str) {
        let Some(target) = &self.target else { return };
        if let Err(e) = send_to(target, state.as_bytes()) {
            log::debug!("sd_notify failed: {e}");
        }
    }
}

fn send_to(target: &Target, msg: &[u8]) -> std::io::Result<usize> {
    let sock = UnixDatagram::unbound()?;
    match target {
        Target::Path(p) => sock.send_to(msg, p),
        #[cfg(target_os = "linux")]
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)
        }
    }
}

/// The watchdog period systemd expects pings within, when it is meant for this process.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        log::info!("WATCHDOG_PID names another process: no watchdog pings from this one");
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half `period` while the Coordinator confirms that every watched
/// actor answers; logs (once per episode) when it does not.
pub async fn run_watchdog(notifier: Notifier, period: Duration, coordinator: Addr<Coordinator>) {
    let every = period / 2;
    log::info!("watchdog: pinging systemd every {} ms while the actors answer", every.as_millis());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled_before = false;
    loop {
        tick.tick().await;
        // The whole check must fit well inside the half period, so one slow answer does not
        // make the pings late.
        let bound = (ANSWER_TIMEOUT * 2).min(every);
        let live = tokio::time::timeout(bound, coordinator.send(CheckLiveness)).await;
        match live {
            Ok(Ok(l)) if l.alive() => {
                notifier.send("WATCHDOG=1");
                if stalled_before {
                    log::info!("watchdog: every actor answers again");
                }
                stalled_before = false;
            }
            other => {
                if !stalled_before {
                    let why = match other {
                        Ok(Ok(l)) => format!("{} did not answer", l.stalled.join(", ")),
                        Ok(Err(_)) => "the coordinator has stopped".to_owned(),
                        // The coordinator waits up to ANSWER_TIMEOUT per actor: with a short
                        // period this bound may expire first, so no name is claimed here.
                        Err(_) => format!(
                            "the liveness check did not complete within {} ms (GET /livez names                              the actor)",
                            bound.as_millis()
                        ),
                    };
                    log::error!("watchdog: not pinging systemd: {why}");
                }
                stalled_before = true;
            }
        }
    }
}

/// Reports mode changes to systemd as `STATUS=` lines (subscribed to the Coordinator's
/// events; only `service.degraded` and `service.recovered` matter to it).
pub struct ModeStatus(pub Notifier);

/// ModeStatus's mailbox: it hears every auth event (it ignores all but `service.*`), and the
/// Coordinator drops events for a subscriber whose mailbox is full; actix's default of 16
/// overflowed under load and could have lost a mode change.
const MODE_STATUS_MAILBOX: usize = 65_536;

impl actix::Actor for ModeStatus {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut actix::Context<Self>) {
        ctx.set_mailbox_capacity(MODE_STATUS_MAILBOX);
    }
}

impl actix::Handler<Deliver> for ModeStatus {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut actix::Context<Self>) {
        match msg.0.event {
            EventKind::ServiceDegraded => self.0.send(
                "STATUS=degraded: answering from the fallback store (see /api/integration-health/)",
            ),
            EventKind::ServiceRecovered => self.0.send("STATUS=serving (Redis)"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { target: Some(Target::Path(path)) };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sessiond-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier { target: Some(Target::Abstract(name.into_bytes())) };
        n.send("WATCHDOG=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn disabled_without_a_socket() {
        let n = Notifier::default();
        assert!(!n.enabled());
        n.send("READY=1");
    }
}
