//! A blocking HTTP/1.1 client that keeps its connection alive between requests (no TLS, no
//! pipelining): one per load thread, so the load looks like wrk's and not like a connection
//! storm. A failed request drops the connection; the next one opens a fresh one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status code and body.
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One keep-alive connection to `host:port`.
pub struct Conn {
    host: String,
    timeout: Duration,
    stream: Option<BufReader<TcpStream>>,
    /// Connections opened so far (1 for a connection that was never dropped).
    pub connects: u64,
}

impl Conn {
    /// A client for `host:port` (no connection is opened yet); `timeout` bounds every read
    /// and write.
    pub fn new(host: &str, timeout: Duration) -> Conn {
        Conn { host: host.to_owned(), timeout, stream: None, connects: 0 }
    }

    fn connect(&mut self) -> Result<&mut BufReader<TcpStream>, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.host).map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
            self.connects += 1;
            self.stream = Some(BufReader::new(s));
        }
        self.stream.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// POSTs a JSON body. On any transport error the connection is dropped and the error
    /// returned (no retry: the caller counts it).
    pub fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Response, String> {
        self.request("POST", path, headers, body)
    }

    /// Sends `method path` with a JSON body (empty for none: it is still sent with its
    /// Content-Type and a Content-Length of 0). Same error handling as [`Conn::post`].
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Response, String> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        let result = self.exchange(req.as_bytes());
        match result {
            Ok((resp, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Sends one request, reads one response; answers it and whether the connection stays.
    fn exchange(&mut self, req: &[u8]) -> Result<(Response, bool), String> {
        let s = self.connect()?;
        s.get_mut().write_all(req).map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        if s.read_line(&mut line).map_err(|e| format!("read status line: {e}"))? == 0 {
            return Err("connection closed before the status line".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("malformed status line {:?}", line.trim_end()))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut keep = !line.starts_with("HTTP/1.0");
        loop {
            line.clear();
            if s.read_line(&mut line).map_err(|e| format!("read header: {e}"))? == 0 {
                return Err("connection closed in the headers".into());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                return Err(format!("malformed header {h:?}"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse().map_err(|_| format!("bad Content-Length {value}"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep = false;
                } else if v.contains("keep-alive") {
                    keep = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                s.read_line(&mut line).map_err(|e| format!("read chunk size: {e}"))?;
                let size_text = line.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_text.trim(), 16)
                    .map_err(|_| format!("bad chunk size {:?}", line.trim_end()))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        line.clear();
                        if s.read_line(&mut line).map_err(|e| e.to_string())? == 0
                            || line.trim_end().is_empty()
                        {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                s.read_exact(&mut body[start..]).map_err(|e| format!("read chunk: {e}"))?;
                let mut crlf = [0u8; 2];
                s.read_exact(&mut crlf).map_err(|e| format!("read chunk end: {e}"))?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            s.read_exact(&mut body).map_err(|e| format!("read body: {e}"))?;
        } else if status >= 200 && status != 204 && status != 304 {
            // No length: the body runs to the end of the connection.
            s.read_to_end(&mut body).map_err(|e| format!("read body: {e}"))?;
            keep = false;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok((Response { status, body }, keep))
    }
}
