//! The Coordinator actor: gives every auth event its cluster-unique id and fans it out to the
//! subscribers (the WebSocket gateway, tests, the self-test probe).
//!
//! Later work adds breaker supervision, the instance mode and the Redis event bus here; the
//! seam is [`RaiseEvent`] in and [`Deliver`] out.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{AuthEvent, now_millis};
use crate::messages::{CoordinatorStats, Deliver, GetCoordinatorStats, RaiseEvent, Subscribe};

/// The most subscribers held at once; a further subscription is refused with a warning.
pub const MAX_SUBSCRIBERS: usize = 1024;

/// The Coordinator actor.
pub struct Coordinator {
    instance_id: String,
    next_seq: u64,
    subscribers: Vec<Recipient<Deliver>>,
    raised: BTreeMap<String, u64>,
}

impl Coordinator {
    /// A coordinator for the instance with this id (the prefix of every event id it raises).
    pub fn new(instance_id: String) -> Self {
        Coordinator { instance_id, next_seq: 0, subscribers: Vec::new(), raised: BTreeMap::new() }
    }

    fn fan_out(&mut self, event: Arc<AuthEvent>) {
        self.subscribers.retain(|sub| match sub.try_send(Deliver(Arc::clone(&event))) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                log::warn!("event subscriber mailbox full; event {} dropped for it", event.id);
                true
            }
            Err(SendError::Closed(_)) => false,
        });
    }
}

/// A fresh random instance id: 16 lowercase hex characters.
pub fn random_instance_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to time and pid, still unique enough per host.
        let mix = (now_millis() as u64) ^ (u64::from(std::process::id()) << 32);
        bytes = mix.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Actor for Coordinator {
    type Context = Context<Self>;
}

impl Handler<RaiseEvent> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: RaiseEvent, _ctx: &mut Context<Self>) {
        self.next_seq += 1;
        let event = AuthEvent {
            id: format!("{}-{}", self.instance_id, self.next_seq),
            event: msg.event,
            session_id: msg.session_id,
            user_id: msg.user_id,
            at_ms: now_millis(),
            data: msg.data,
        };
        *self.raised.entry(msg.event.as_str().to_owned()).or_insert(0) += 1;
        log::debug!("event {} {}", event.id, event.event.as_str());
        self.fan_out(Arc::new(event));
    }
}

impl Handler<Subscribe> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) {
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            log::warn!("event subscriber refused: {MAX_SUBSCRIBERS} already subscribed");
            return;
        }
        self.subscribers.push(msg.0);
    }
}

impl Handler<GetCoordinatorStats> for Coordinator {
    type Result = MessageResult<GetCoordinatorStats>;

    fn handle(&mut self, _msg: GetCoordinatorStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(CoordinatorStats {
            instance_id: self.instance_id.clone(),
            events_raised: self.raised.clone(),
            subscribers: self.subscribers.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    struct Probe(tokio::sync::mpsc::UnboundedSender<Arc<AuthEvent>>);
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<Deliver> for Probe {
        type Result = ();
        fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
            let _ = self.0.send(msg.0);
        }
    }

    #[actix_rt::test]
    async fn events_get_unique_ids_and_reach_every_subscriber() {
        let coord = Coordinator::new("abc".into()).start();
        let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel();
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        coord.send(Subscribe(Probe(tx1).start().recipient())).await.unwrap();
        coord.send(Subscribe(Probe(tx2).start().recipient())).await.unwrap();
        for sid in ["s-1", "s-2"] {
            coord
                .send(RaiseEvent {
                    event: EventKind::SessionRevoked,
                    session_id: Some(sid.into()),
                    user_id: Some("42".into()),
                    data: serde_json::json!({}),
                })
                .await
                .unwrap();
        }
        let a = rx1.recv().await.unwrap();
        let b = rx1.recv().await.unwrap();
        assert_eq!(a.id, "abc-1");
        assert_eq!(b.id, "abc-2");
        assert_eq!(a.session_id.as_deref(), Some("s-1"));
        assert_eq!(rx2.recv().await.unwrap().id, "abc-1");
        let stats = coord.send(GetCoordinatorStats).await.unwrap();
        assert_eq!(stats.events_raised.get("session.revoked"), Some(&2));
        assert_eq!(stats.subscribers, 2);
    }

    #[test]
    fn instance_ids_are_random_hex() {
        let a = random_instance_id();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_instance_id());
    }
}
