//! A connection's bounded outbound queue: the connection actor pushes frames, the writer
//! (`transport::write_loop`) takes them one at a time and hands them to the socket.
//!
//! Both sides run on the same worker thread (the actor and its writer future), so the queue
//! is an `Rc<RefCell<…>>` with one waker, not a channel. A close is kept apart from the
//! frames: it always fits, even in a full queue, and goes out after the frames queued before
//! it — or at once, when the queue is dropped (overflow: a client that does not read).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::frames::Encoded;

/// One item for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A protocol frame.
    Frame(Encoded),
    /// A WebSocket ping (heartbeat), empty payload.
    Ping,
    /// A WebSocket pong answering the client's ping, with its payload.
    Pong(Vec<u8>),
}

/// A close frame: code and a short reason (at most 123 bytes go out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// The close code (e.g. 4001).
    pub code: u16,
    /// A short human-readable reason.
    pub reason: Cow<'static, str>,
}

impl Close {
    /// A close with a fixed reason.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Close { code, reason: Cow::Borrowed(reason) }
    }
}

/// What the writer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this item.
    Send(Outgoing),
    /// Every earlier item is out (or dropped): send this close frame, then stop.
    Close(Close),
    /// Stop without a close frame (the connection is gone).
    End,
}

/// The queue is full: the client is too slow.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

#[derive(Debug)]
struct State {
    queue: VecDeque<Outgoing>,
    capacity: usize,
    close: Option<Close>,
    close_requested_at: Option<Instant>,
    dropped: bool,
    ended: bool,
    waker: Option<Waker>,
}

impl State {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn drop_queue(&mut self) {
        self.queue.clear();
        self.queue.shrink_to_fit();
        self.dropped = true;
    }
}

/// The shared handle; clones share one queue.
#[derive(Clone, Debug)]
pub struct Outbox(Rc<RefCell<State>>);

impl Outbox {
    /// An empty queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        Outbox(Rc::new(RefCell::new(State {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            close: None,
            close_requested_at: None,
            dropped: false,
            ended: false,
            waker: None,
        })))
    }

    /// Queues an item. Once a close was requested (or the queue ended) items are silently
    /// discarded: nothing may follow a close frame.
    pub fn push(&self, item: Outgoing) -> Result<(), Overflow> {
        let mut s = self.0.borrow_mut();
        if s.close.is_some() || s.ended {
            return Ok(());
        }
        if s.queue.len() >= s.capacity {
            return Err(Overflow);
        }
        s.queue.push_back(item);
        s.wake();
        Ok(())
    }

    /// Requests a close frame after the items already queued; with `drop_queue` they are
    /// dropped and the close goes out next. The first close wins; later ones are ignored.
    pub fn close(&self, close: Close, drop_queue: bool) {
        let mut s = self.0.borrow_mut();
        if s.close.is_some() || s.ended {
            return;
        }
        s.close = Some(close);
        s.close_requested_at = Some(Instant::now());
        if drop_queue {
            s.drop_queue();
        }
        s.wake();
    }

    /// The connection is gone: drop everything, the writer stops without a close frame.
    pub fn end(&self) {
        let mut s = self.0.borrow_mut();
        s.ended = true;
        s.drop_queue();
        s.wake();
    }

    /// Whether a close was requested (or the queue ended).
    #[cfg(test)]
    pub fn is_closing(&self) -> bool {
        let s = self.0.borrow();
        s.close.is_some() || s.ended
    }

    /// Items waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.borrow().queue.len()
    }

    /// Writer side: the next thing to do, or `Pending` until there is one.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut s = self.0.borrow_mut();
        if s.ended {
            return Poll::Ready(Next::End);
        }
        if let Some(item) = s.queue.pop_front() {
            return Poll::Ready(Next::Send(item));
        }
        if let Some(close) = &s.close {
            return Poll::Ready(Next::Close(close.clone()));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Writer side, while an item is on its way: `Ready(None)` once the queue was dropped or
    /// ended (stop waiting for the socket), `Ready(Some(t))` once a close was requested at
    /// `t` (the remaining items get a bounded time from then on), else `Pending`.
    pub fn poll_interrupt(&self, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        let mut s = self.0.borrow_mut();
        if s.dropped || s.ended {
            return Poll::Ready(None);
        }
        if let Some(t) = s.close_requested_at {
            return Poll::Ready(Some(t));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Writer side: when the close was requested, if it was.
    pub fn close_requested_at(&self) -> Option<Instant> {
        self.0.borrow().close_requested_at
    }

    /// Writer side: the remaining items did not get out in time; drop them.
    pub fn give_up(&self) {
        self.0.borrow_mut().drop_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn next(o: &Outbox) -> Poll<Next> {
        o.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    fn text(s: &str) -> Outgoing {
        Outgoing::Frame(Encoded::Text(s.into()))
    }

    const REVOKED: Close = Close::new(4001, "session revoked");
    const SLOW: Close = Close::new(1013, "client too slow");

    #[test]
    fn items_go_out_in_order_then_the_close() {
        let o = Outbox::new(4);
        assert_eq!(next(&o), Poll::Pending);
        o.push(text("a")).unwrap();
        o.push(Outgoing::Ping).unwrap();
        o.close(REVOKED, false);
        o.push(text("after close")).unwrap(); // discarded
        assert!(o.is_closing());
        assert_eq!(next(&o), Poll::Ready(Next::Send(text("a"))));
        assert_eq!(next(&o), Poll::Ready(Next::Send(Outgoing::Ping)));
        assert_eq!(next(&o), Poll::Ready(Next::Close(REVOKED)));
    }

    #[test]
    fn a_full_queue_overflows_and_a_dropping_close_still_fits() {
        let o = Outbox::new(2);
        o.push(text("a")).unwrap();
        o.push(text("b")).unwrap();
        assert_eq!(o.push(text("c")), Err(Overflow));
        assert_eq!(o.len(), 2);
        o.close(SLOW, true);
        o.close(REVOKED, false); // the first close wins
        assert_eq!(o.len(), 0);
        assert_eq!(next(&o), Poll::Ready(Next::Close(SLOW)));
    }

    #[test]
    fn interrupts_tell_the_writer_to_stop_waiting() {
        let cx = &mut Context::from_waker(Waker::noop());
        let o = Outbox::new(2);
        o.push(text("a")).unwrap();
        assert_eq!(o.poll_interrupt(cx), Poll::Pending);
        o.close(REVOKED, false);
        assert!(matches!(o.poll_interrupt(cx), Poll::Ready(Some(_))));
        assert_eq!(o.close_requested_at(), o.close_requested_at());
        o.give_up();
        assert_eq!(o.poll_interrupt(cx), Poll::Ready(None));
        assert_eq!(next(&o), Poll::Ready(Next::Close(REVOKED)));

        let gone = Outbox::new(2);
        gone.push(text("a")).unwrap();
        gone.end();
        assert_eq!(gone.poll_interrupt(cx), Poll::Ready(None));
        assert_eq!(next(&gone), Poll::Ready(Next::End));
        gone.close(REVOKED, false); // too late: ignored
        assert_eq!(next(&gone), Poll::Ready(Next::End));
    }
}
