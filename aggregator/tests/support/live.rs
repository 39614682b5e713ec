//! A live-feed client for tests: a real WebSocket to `/api/fleet/live` and every message it
//! has received, in order.

use serde_json::Value;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// The connection.
pub type Socket = WebSocket<TcpStream>;

/// Connects to the live feed at `port` with `query` (`?access_token=...&topics=...`); with
/// `header_token` the token goes in an `Authorization` header instead.
pub fn connect(
    port: u16,
    query: &str,
    header_token: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let url = format!("ws://127.0.0.1:{port}/api/fleet/live{query}");
    let mut request = url.into_client_request()?;
    if let Some(token) = header_token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("valid header"),
        );
    }
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    tungstenite::client(request, stream)
        .map(|(socket, _)| socket)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

/// A client's view of the feed: every message received so far, in order.
pub struct Feed {
    pub socket: Socket,
    pub log: Vec<Value>,
}

impl Feed {
    pub fn new(socket: Socket) -> Feed {
        Feed {
            socket,
            log: Vec::new(),
        }
    }

    /// The position of the first message (received or yet to come) that satisfies `want`.
    pub fn wait(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> usize {
        if let Some(i) = self.log.iter().position(&want) {
            return i;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).expect("the feed sends JSON");
                    self.log.push(v);
                    if want(&self.log[self.log.len() - 1]) {
                        return self.log.len() - 1;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("live feed failed while waiting for {what}: {e}"),
            }
        }
        panic!("no {what} within 60 s; got {:#?}", self.log);
    }

    /// The first message that satisfies `want`.
    pub fn get(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let i = self.wait(what, want);
        self.log[i].clone()
    }

    pub fn send(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).unwrap();
    }
}
