//! The fleet protocol between agent and aggregator, apart from any I/O: the messages, and the
//! per-connection state machines of both ends, driven by the callers with decoded messages.
//!
//! Over QUIC, the agent opens one bidirectional *control* stream and sends [`Hello`]; the
//! aggregator answers [`Welcome`]. Each batch then travels on its own bidirectional stream: the
//! agent sends one [`Message::Batch`] and finishes the stream, the aggregator answers one
//! [`Message::Ack`] once the batch is durable. Many batch streams run at once (the window).

use crate::model::{Batch, HostFacts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// ALPN protocol name: the protocol and its major version.
pub const ALPN: &[u8] = b"fleetwatch/1";

/// Everything that travels in a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Agent → aggregator, first message on the control stream.
    Hello(Hello),
    /// Aggregator → agent, the answer to `Hello`.
    Welcome(Welcome),
    /// Agent → aggregator, one per batch stream.
    Batch(Batch),
    /// Aggregator → agent, the answer to a batch.
    Ack(Ack),
}

impl Message {
    /// The message kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Batch(_) => "batch",
            Message::Ack(_) => "ack",
        }
    }
}

/// The agent introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// Facts about its host.
    pub facts: HostFacts,
    /// Agent clock when sending, milliseconds since the Unix epoch.
    pub sent_ms: i64,
    /// Batches waiting in the agent's buffer, for the fleet view.
    pub backlog_batches: u64,
}

/// The aggregator accepts the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The aggregator's version.
    pub server_version: String,
    /// The identity the aggregator took from the agent's certificate.
    pub host: String,
    /// Aggregator clock when answering.
    pub server_time_ms: i64,
    /// Echo of `Hello::sent_ms`, so the agent can measure the round trip.
    pub echo_sent_ms: i64,
    /// How many batch streams the agent may keep open at once.
    pub max_in_flight: u32,
    /// Largest frame payload the aggregator accepts.
    pub max_payload_bytes: u32,
}

/// The aggregator's answer to one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The batch's sequence number.
    pub seq: u64,
    /// What became of it.
    pub status: AckStatus,
}

/// What became of a batch. Every status means "delete it from your buffer": a rejected batch
/// would be rejected again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Durably stored.
    Applied,
    /// Stored earlier (a resend after a lost acknowledgement); nothing stored twice.
    Duplicate,
    /// Stored, except `dropped` items that broke a limit; `reason` names the first breach.
    Partial {
        /// Items not stored.
        dropped: u64,
        /// The first breach, in words.
        reason: String,
    },
    /// Nothing stored, for `reason`.
    Rejected {
        /// Why, in words.
        reason: String,
    },
}

/// A peer did something the protocol does not allow; the connection should be closed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// A message arrived that is not allowed in the current state.
    #[error("unexpected {got} message while {state}")]
    Unexpected {
        /// The message kind.
        got: &'static str,
        /// The state, in words.
        state: &'static str,
    },
    /// An acknowledgement for a batch that was not in flight.
    #[error("acknowledgement for batch {0}, which is not in flight")]
    UnknownAck(u64),
    /// The peer went over the in-flight window.
    #[error("{0} batches in flight exceeds the window")]
    WindowExceeded(usize),
}

/// Settings the aggregator announces to every agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerParams {
    /// Batch streams an agent may keep open at once.
    pub max_in_flight: u32,
    /// Largest frame payload accepted.
    pub max_payload_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerState {
    AwaitHello,
    Ready,
}

/// The aggregator's side of one agent connection.
#[derive(Debug)]
pub struct ServerConn {
    host: String,
    params: ServerParams,
    state: ServerState,
    in_flight: usize,
    hello: Option<Hello>,
    clock_skew_ms: i64,
}

impl ServerConn {
    /// A connection from the agent whose certificate names `host`.
    pub fn new(host: impl Into<String>, params: ServerParams) -> Self {
        Self {
            host: host.into(),
            params,
            state: ServerState::AwaitHello,
            in_flight: 0,
            hello: None,
            clock_skew_ms: 0,
        }
    }

    /// The identity from the certificate.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The agent's `Hello`, once received.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Agent clock minus aggregator clock, in milliseconds, measured at `Hello`.
    pub fn clock_skew_ms(&self) -> i64 {
        self.clock_skew_ms
    }

    /// A message on the control stream. `now_ms` is the aggregator clock and `rtt_ms` the
    /// connection's round-trip estimate; returns the answer to send.
    pub fn on_control(
        &mut self,
        message: Message,
        now_ms: i64,
        rtt_ms: i64,
    ) -> Result<Message, ProtocolViolation> {
        match (&self.state, message) {
            (ServerState::AwaitHello, Message::Hello(hello)) => {
                // The agent stamped `sent_ms` about half a round trip ago.
                self.clock_skew_ms = hello.sent_ms + rtt_ms / 2 - now_ms;
                let welcome = Welcome {
                    server_version: env!("CARGO_PKG_VERSION").to_string(),
                    host: self.host.clone(),
                    server_time_ms: now_ms,
                    echo_sent_ms: hello.sent_ms,
                    max_in_flight: self.params.max_in_flight,
                    max_payload_bytes: self.params.max_payload_bytes,
                };
                self.hello = Some(hello);
                self.state = ServerState::Ready;
                Ok(Message::Welcome(welcome))
            }
            (state, other) => Err(ProtocolViolation::Unexpected {
                got: other.kind(),
                state: match state {
                    ServerState::AwaitHello => "awaiting hello",
                    ServerState::Ready => "on the control stream after hello",
                },
            }),
        }
    }

    /// The message that opened a batch stream. Returns the batch to validate and store; the
    /// caller must call [`ServerConn::finish_batch`] when it is done with it.
    pub fn on_batch_stream(&mut self, message: Message) -> Result<Batch, ProtocolViolation> {
        if self.state != ServerState::Ready {
            return Err(ProtocolViolation::Unexpected {
                got: message.kind(),
                state: "awaiting hello",
            });
        }
        match message {
            Message::Batch(batch) => {
                // Allow some slack over the window: a stream may still be finishing.
                if self.in_flight >= self.params.max_in_flight as usize * 2 {
                    return Err(ProtocolViolation::WindowExceeded(self.in_flight + 1));
                }
                self.in_flight += 1;
                Ok(batch)
            }
            other => Err(ProtocolViolation::Unexpected {
                got: other.kind(),
                state: "reading a batch stream",
            }),
        }
    }

    /// The batch `seq` has been dealt with; returns the acknowledgement to send.
    pub fn finish_batch(&mut self, seq: u64, status: AckStatus) -> Message {
        self.in_flight = self.in_flight.saturating_sub(1);
        Message::Ack(Ack { seq, status })
    }

    /// A batch stream ended without an acknowledgement (the store failed; the agent resends).
    pub fn forget_batch(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Batch streams currently being processed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// Read-only view of the agent's buffer, as the scheduler needs it.
pub trait PendingBatches {
    /// The smallest buffered sequence number greater than `seq`.
    fn first_after(&self, seq: u64) -> Option<u64>;
}

impl PendingBatches for BTreeSet<u64> {
    fn first_after(&self, seq: u64) -> Option<u64> {
        self.range(seq.saturating_add(1)..).next().copied()
    }
}

/// How the agent learnt about the aggregator's answer to its `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The aggregator's welcome.
    pub welcome: Welcome,
    /// Round trip of the hello, milliseconds.
    pub rtt_ms: i64,
    /// Agent clock minus aggregator clock, milliseconds.
    pub clock_skew_ms: i64,
}

/// What the agent does with a batch once the aggregator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Stored (or stored before): delete it from the buffer.
    Delivered {
        /// The batch.
        seq: u64,
        /// Whether it had been stored before.
        duplicate: bool,
    },
    /// Stored in part: delete it, count the dropped items.
    Partial {
        /// The batch.
        seq: u64,
        /// Items the aggregator refused.
        dropped: u64,
        /// Why.
        reason: String,
    },
    /// Refused as a whole: delete it, count and log it.
    Rejected {
        /// The batch.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// The agent's side of one aggregator connection: the hello exchange, the in-flight window and
/// the **live-first** choice of what to send next.
///
/// When the connection starts, every batch already buffered is *backlog* (sequence numbers up
/// to the boundary); anything buffered later is *live*. Live batches always go first, oldest
/// live first; the backlog drains oldest first in the window's remaining slots.
#[derive(Debug)]
pub struct ClientConn {
    session: Option<Session>,
    window: usize,
    boundary: u64,
    live_cursor: u64,
    backlog_cursor: u64,
    in_flight: BTreeSet<u64>,
}

impl ClientConn {
    /// A new connection; `newest_buffered` is the highest sequence number in the buffer now
    /// (0 when empty), `window` the agent's own limit on batches in flight.
    pub fn new(newest_buffered: u64, window: usize) -> Self {
        Self {
            session: None,
            window: window.max(1),
            boundary: newest_buffered,
            live_cursor: newest_buffered,
            backlog_cursor: 0,
            in_flight: BTreeSet::new(),
        }
    }

    /// The hello to send on the control stream.
    pub fn hello(
        &self,
        agent_version: &str,
        facts: HostFacts,
        now_ms: i64,
        backlog: u64,
    ) -> Message {
        Message::Hello(Hello {
            agent_version: agent_version.to_string(),
            facts,
            sent_ms: now_ms,
            backlog_batches: backlog,
        })
    }

    /// The aggregator's answer on the control stream.
    pub fn on_welcome(
        &mut self,
        message: Message,
        now_ms: i64,
    ) -> Result<&Session, ProtocolViolation> {
        if self.session.is_some() {
            return Err(ProtocolViolation::Unexpected {
                got: message.kind(),
                state: "already welcomed",
            });
        }
        match message {
            Message::Welcome(welcome) => {
                let rtt_ms = (now_ms - welcome.echo_sent_ms).max(0);
                let clock_skew_ms = welcome.echo_sent_ms + rtt_ms / 2 - welcome.server_time_ms;
                self.window = self.window.min(welcome.max_in_flight.max(1) as usize);
                Ok(self.session.insert(Session {
                    welcome,
                    rtt_ms,
                    clock_skew_ms,
                }))
            }
            other => Err(ProtocolViolation::Unexpected {
                got: other.kind(),
                state: "awaiting welcome",
            }),
        }
    }

    /// The session, once welcomed.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The batch to send next, if the window has room; marks it in flight.
    pub fn next_to_send(&mut self, pending: &impl PendingBatches) -> Option<u64> {
        if self.session.is_none() || self.in_flight.len() >= self.window {
            return None;
        }
        // Live first.
        let mut cursor = self.live_cursor;
        while let Some(seq) = pending.first_after(cursor) {
            cursor = seq;
            if !self.in_flight.contains(&seq) {
                self.live_cursor = seq;
                self.in_flight.insert(seq);
                return Some(seq);
            }
        }
        self.live_cursor = cursor;
        let mut cursor = self.backlog_cursor;
        while let Some(seq) = pending.first_after(cursor) {
            if seq > self.boundary {
                break;
            }
            cursor = seq;
            if !self.in_flight.contains(&seq) {
                self.backlog_cursor = seq;
                self.in_flight.insert(seq);
                return Some(seq);
            }
        }
        self.backlog_cursor = cursor.min(self.boundary);
        None
    }

    /// Whether `seq` is backlog (buffered before this connection started).
    pub fn is_backlog(&self, seq: u64) -> bool {
        seq <= self.boundary
    }

    /// The aggregator's acknowledgement of a batch.
    pub fn on_ack(&mut self, message: Message) -> Result<AckOutcome, ProtocolViolation> {
        let ack = match message {
            Message::Ack(ack) => ack,
            other => {
                return Err(ProtocolViolation::Unexpected {
                    got: other.kind(),
                    state: "awaiting an acknowledgement",
                })
            }
        };
        if !self.in_flight.remove(&ack.seq) {
            return Err(ProtocolViolation::UnknownAck(ack.seq));
        }
        Ok(match ack.status {
            AckStatus::Applied => AckOutcome::Delivered {
                seq: ack.seq,
                duplicate: false,
            },
            AckStatus::Duplicate => AckOutcome::Delivered {
                seq: ack.seq,
                duplicate: true,
            },
            AckStatus::Partial { dropped, reason } => AckOutcome::Partial {
                seq: ack.seq,
                dropped,
                reason,
            },
            AckStatus::Rejected { reason } => AckOutcome::Rejected {
                seq: ack.seq,
                reason,
            },
        })
    }

    /// Sending `seq` failed (stream reset, timeout): it goes back to be sent again.
    pub fn on_failed(&mut self, seq: u64) {
        if self.in_flight.remove(&seq) {
            let before = seq.saturating_sub(1);
            if seq > self.boundary {
                self.live_cursor = self.live_cursor.min(before);
            } else {
                self.backlog_cursor = self.backlog_cursor.min(before);
            }
        }
    }

    /// A batch that left the buffer without an ack (dropped as oldest while in flight).
    pub fn forget(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Batches in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The in-flight window in force.
    pub fn window(&self) -> usize {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::model::Lane;

    const PARAMS: ServerParams = ServerParams {
        max_in_flight: 4,
        max_payload_bytes: 1 << 20,
    };

    /// Passes a message through the real codec, as the wire would.
    fn wire(m: Message) -> Message {
        codec::decode(&codec::encode(&m).unwrap(), &codec::FrameLimits::default()).unwrap()
    }

    fn connected(pending_max: u64, window: usize) -> (ClientConn, ServerConn) {
        let mut client = ClientConn::new(pending_max, window);
        let mut server = ServerConn::new("web-1", PARAMS);
        let hello = client.hello("0.1.0", HostFacts::default(), 1_000, pending_max);
        let welcome = server
            .on_control(wire(hello), 1_000 + 50 - 2_000, 100)
            .unwrap();
        client.on_welcome(wire(welcome), 1_100).unwrap();
        (client, server)
    }

    #[test]
    fn hello_welcome_measures_rtt_and_skew() {
        let (client, server) = connected(0, 8);
        let s = client.session().unwrap();
        assert_eq!(s.rtt_ms, 100);
        // agent clock is 2 s ahead of the aggregator's
        assert_eq!(s.clock_skew_ms, 2_000);
        assert_eq!(server.clock_skew_ms(), 2_000);
        assert_eq!(s.welcome.host, "web-1");
        // window is the smaller of the two
        assert_eq!(client.window(), 4);
    }

    #[test]
    fn batch_before_hello_is_a_violation() {
        let mut server = ServerConn::new("a", PARAMS);
        let err = server
            .on_batch_stream(Message::Batch(Batch::new(Lane::Metrics, 0)))
            .unwrap_err();
        assert_eq!(
            err,
            ProtocolViolation::Unexpected {
                got: "batch",
                state: "awaiting hello"
            }
        );
    }

    #[test]
    fn second_hello_is_a_violation() {
        let (mut client, mut server) = connected(0, 2);
        let hello = client.hello("0.1.0", HostFacts::default(), 0, 0);
        assert!(server.on_control(hello, 0, 0).is_err());
        let _ = client.next_to_send(&BTreeSet::new());
    }

    #[test]
    fn live_batches_go_before_backlog() {
        // 1..=10 buffered before connecting: backlog.
        let mut pending: BTreeSet<u64> = (1..=10).collect();
        let (mut client, _server) = connected(10, 3);
        assert_eq!(client.next_to_send(&pending), Some(1));
        // a fresh batch arrives
        pending.insert(11);
        assert_eq!(client.next_to_send(&pending), Some(11));
        assert_eq!(client.next_to_send(&pending), Some(2));
        // window (3) full
        assert_eq!(client.next_to_send(&pending), None);
        pending.insert(12);
        let outcome = client
            .on_ack(Message::Ack(Ack {
                seq: 2,
                status: AckStatus::Applied,
            }))
            .unwrap();
        assert_eq!(
            outcome,
            AckOutcome::Delivered {
                seq: 2,
                duplicate: false
            }
        );
        pending.remove(&2);
        assert_eq!(client.next_to_send(&pending), Some(12));
    }

    #[test]
    fn failed_batch_is_sent_again() {
        let pending: BTreeSet<u64> = (1..=3).collect();
        let (mut client, _server) = connected(3, 2);
        assert_eq!(client.next_to_send(&pending), Some(1));
        assert_eq!(client.next_to_send(&pending), Some(2));
        client.on_failed(1);
        assert_eq!(client.next_to_send(&pending), Some(1));
        assert_eq!(client.next_to_send(&pending), None);
    }

    #[test]
    fn unknown_ack_is_a_violation() {
        let (mut client, _server) = connected(0, 2);
        assert_eq!(
            client.on_ack(Message::Ack(Ack {
                seq: 9,
                status: AckStatus::Applied
            })),
            Err(ProtocolViolation::UnknownAck(9))
        );
    }

    #[test]
    fn every_batch_is_sent_once_when_all_succeed() {
        // In-memory model of a whole exchange: batches arrive while others are in flight.
        let mut pending: BTreeSet<u64> = (1..=50).collect();
        let (mut client, mut server) = connected(50, 4);
        let mut next_new = 51;
        let mut delivered = Vec::new();
        for round in 0..200 {
            if round % 3 == 0 && next_new <= 80 {
                pending.insert(next_new);
                next_new += 1;
            }
            let mut sent = Vec::new();
            while let Some(seq) = client.next_to_send(&pending) {
                let mut b = Batch::new(Lane::Metrics, 0);
                b.seq = seq;
                let batch = server.on_batch_stream(wire(Message::Batch(b))).unwrap();
                sent.push(server.finish_batch(batch.seq, AckStatus::Applied));
            }
            for ack in sent {
                if let AckOutcome::Delivered { seq, .. } = client.on_ack(wire(ack)).unwrap() {
                    pending.remove(&seq);
                    delivered.push(seq);
                }
            }
        }
        let mut sorted = delivered.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), delivered.len(), "a batch was delivered twice");
        assert_eq!(sorted, (1..=80).collect::<Vec<_>>());
        assert!(pending.is_empty());
    }
}
