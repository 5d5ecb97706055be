//! A deliberately tiny HTTP/1.1 client over a blocking `TcpStream`.
//!
//! The benchmark measures proxies that add tens of microseconds, so the
//! client must add as little, and as steadily, as possible: no async runtime
//! and its timer wheel (tokio's timers tick in whole milliseconds), no
//! connection pool, no header map. One `Conn` is one keep-alive connection;
//! it writes a request that was formatted once and reads one response.
//!
//! It understands exactly what the proxies under test send back:
//! `Content-Length` bodies, `Transfer-Encoding: chunked` bodies, and bodies
//! that end when the server closes the connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One response, as much of it as the benchmark needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said `Connection: close` (or closed): open a new connection.
    pub close: bool,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read from the socket but not consumed yet (the next response
    /// may already be partly here).
    buf: Vec<u8>,
}

impl Conn {
    /// Connect with `TCP_NODELAY`, as every proxy under test does: without it
    /// Nagle's algorithm would hold small requests back for up to 40 ms.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Change how long a read may block (a long-poll waits longer than a
    /// plain request).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// Send one request (already formatted with [`request`]) and read its response.
    pub fn round_trip(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request)?;
        self.read_response()
    }

    /// Read one response off the connection.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        self.buf.drain(..head_end);

        let body = if head.status < 200 || head.status == 204 || head.status == 304 {
            Vec::new()
        } else if head.chunked {
            self.read_chunked()?
        } else if let Some(len) = head.content_length {
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        } else {
            // No length at all: the body runs until the server closes.
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            return Ok(Response {
                status: head.status,
                body: std::mem::take(&mut self.buf),
                close: true,
            });
        };
        Ok(Response {
            status: head.status,
            body,
            close: head.close,
        })
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.buf, b"\r\n") {
                    break end;
                }
                self.fill()?;
            };
            let line = std::str::from_utf8(&self.buf[..line_end]).map_err(|_| bad("chunk size"))?;
            // A chunk size may carry `;extensions`; only the hex number matters.
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Skip trailers up to the empty line that ends the message.
                loop {
                    let end = loop {
                        if let Some(end) = find(&self.buf, b"\r\n") {
                            break end;
                        }
                        self.fill()?;
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Read whatever the socket has into `buf`; EOF is an error here because
    /// every caller still expects bytes.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection in the middle of a response",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Format a request once, so sending it costs one `write`.
///
/// With `MESH_CONTROL_TOKEN` set (the harness sets it for `mesh-bench
/// control`), every request carries it: mesh-control refuses writes without
/// its token.
pub fn request(method: &str, path: &str, host: &str, body: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mesh-bench\r\n");
    if let Ok(token) = std::env::var("MESH_CONTROL_TOKEN") {
        out.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some((content_type, bytes)) = body {
        out.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        ));
        let mut out = out.into_bytes();
        out.extend_from_slice(bytes);
        return out;
    }
    out.push_str("\r\n");
    out.into_bytes()
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    // `HTTP/1.1 200 OK`: the code is the second word.
    let mut words = status_line.split(' ');
    let version = words.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad("status line does not start with HTTP/1.x"));
    }
    let status = words
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("status code"))?;
    let mut parsed = Head {
        status,
        content_length: None,
        chunked: false,
        // HTTP/1.0 closes unless told otherwise.
        close: version == "HTTP/1.0",
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = Some(value.parse().map_err(|_| bad("content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                parsed.close = true;
            } else if value.contains("keep-alive") {
                parsed.close = false;
            }
        }
    }
    Ok(parsed)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed HTTP response: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A server that writes `replies` back to back, whatever it is sent.
    fn canned(replies: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).unwrap();
            // Dribble the bytes out one at a time: the reader must cope with
            // a response split anywhere.
            for byte in replies {
                socket.write_all(&[*byte]).unwrap();
            }
        });
        addr
    }

    #[test]
    fn reads_content_length_then_chunked_responses_on_one_connection() {
        let addr = canned(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
              HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\nwxyz\r\n2\r\n!!\r\n0\r\nX-Trailer: t\r\n\r\n",
        );
        let mut conn = Conn::connect(addr, Duration::from_secs(5)).unwrap();
        let first = conn
            .round_trip(&request("GET", "/", "upstream:8080", None))
            .unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.body, b"abc");
        assert!(!first.close);
        let second = conn.read_response().unwrap();
        assert_eq!(second.status, 503);
        assert_eq!(second.body, b"wxyz!!");
    }

    #[test]
    fn a_body_without_length_ends_when_the_server_closes() {
        let addr = canned(b"HTTP/1.0 200 OK\r\n\r\nuntil close");
        let mut conn = Conn::connect(addr, Duration::from_secs(5)).unwrap();
        let response = conn.round_trip(&request("GET", "/", "x", None)).unwrap();
        assert_eq!(response.body, b"until close");
        assert!(response.close);
    }

    #[test]
    fn a_request_is_formatted_once_with_its_body() {
        let bytes = request(
            "PUT",
            "/v1/proxies/a",
            "ctl",
            Some(("application/json", b"{}")),
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("PUT /v1/proxies/a HTTP/1.1\r\nHost: ctl\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        let addr = canned(b"SSH-2.0-OpenSSH\r\n\r\n");
        let mut conn = Conn::connect(addr, Duration::from_secs(5)).unwrap();
        let err = conn
            .round_trip(&request("GET", "/", "x", None))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
