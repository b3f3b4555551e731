//! Just enough HTTP/1.1 for a model-server stand-in: request parsing (with size limits),
//! query strings, and `Content-Length` or chunked responses.
//!
//! Bodies are read by `Content-Length`; a chunked request body is decoded too, so any
//! client works. Anything malformed is an `InvalidData` error: the server answers 400 and
//! closes the connection.

use std::io::{self, BufRead, Read, Write};

/// Most bytes the request line and headers together may take.
pub const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// The protocol version a request was sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless asked otherwise.
    Http10,
    /// HTTP/1.1: keep-alive unless `Connection: close`.
    Http11,
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The raw query string (after `?`), possibly empty.
    pub query: String,
    /// Protocol version.
    pub version: Version,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (empty when none was sent).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        let tokens = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let has = |t: &str| tokens.split(',').any(|s| s.trim() == t);
        match self.version {
            Version::Http11 => !has("close"),
            Version::Http10 => has("keep-alive"),
        }
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one line (up to `\n`), charging it against `budget`. `None` at end of input.
fn read_line<R: BufRead>(reader: &mut R, budget: &mut u64) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(*budget + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n as u64 > *budget {
        return Err(invalid("request head too large"));
    }
    *budget -= n as u64;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-line",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("request head is not UTF-8"))
}

/// Reads the next request from a connection. `Ok(None)` when the peer closed the
/// connection cleanly between requests.
pub fn read_request<R: BufRead>(reader: &mut R) -> io::Result<Option<Request>> {
    let mut budget = MAX_HEAD_BYTES;
    // Tolerate blank lines before a request line (RFC 9112 section 2.2).
    let request_line = loop {
        match read_line(reader, &mut budget)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("malformed request line {request_line:?}")));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(format!("malformed method {method:?}")));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        other => return Err(invalid(format!("unsupported version {other:?}"))),
    };
    if !target.starts_with('/') {
        return Err(invalid(format!("unsupported request target {target:?}")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed in headers"))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header {line:?}")))?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(invalid(format!("malformed header name {name:?}")));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }

    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        version,
        headers,
        body: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        request.body = read_chunked_body(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: u64 = length
            .parse()
            .map_err(|_| invalid(format!("malformed content-length {length:?}")))?;
        if length > MAX_BODY_BYTES {
            return Err(invalid(format!("body of {length} bytes is too large")));
        }
        let mut body = vec![0; length as usize];
        reader.read_exact(&mut body)?;
        request.body = body;
    }
    Ok(Some(request))
}

fn read_chunked_body<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut budget = MAX_HEAD_BYTES;
    loop {
        let line = read_line(reader, &mut budget)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed in body"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("malformed chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the blank line.
            while read_line(reader, &mut budget)?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY_BYTES {
            return Err(invalid("chunked body too large"));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// Splits a query string into decoded `(name, value)` pairs, in order. `+` is a space and
/// `%XX` a byte; a malformed escape is kept literally.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// The first value of `name` in a query string, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    parse_query(query)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn write_head<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    framing: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{framing}\r\nConnection: {connection}\r\n\r\n",
        reason(status)
    )
}

/// Writes a whole response with a `Content-Length`.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let framing = format!("Content-Length: {}", body.len());
    write_head(w, status, content_type, &framing, keep_alive)?;
    w.write_all(body)?;
    w.flush()
}

/// A response sent with `Transfer-Encoding: chunked`, one flushed chunk at a time.
pub struct Chunked<'a, W: Write> {
    w: &'a mut W,
}

impl<'a, W: Write> Chunked<'a, W> {
    /// Writes and flushes the response head.
    pub fn start(
        w: &'a mut W,
        status: u16,
        content_type: &str,
        keep_alive: bool,
    ) -> io::Result<Self> {
        write_head(
            w,
            status,
            content_type,
            "Transfer-Encoding: chunked",
            keep_alive,
        )?;
        w.flush()?;
        Ok(Self { w })
    }

    /// Writes one chunk and flushes it, so the client sees it now.
    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(()); // an empty chunk would end the body
        }
        write!(self.w, "{:x}\r\n", data.len())?;
        self.w.write_all(data)?;
        self.w.write_all(b"\r\n")?;
        self.w.flush()
    }

    /// Writes the terminating chunk.
    pub fn finish(self) -> io::Result<()> {
        self.w.write_all(b"0\r\n\r\n")?;
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> io::Result<Option<Request>> {
        read_request(&mut io::BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn parses_a_get_with_query_and_headers() {
        let req = parse("GET /stream?n=3&delay_ms=10 HTTP/1.1\r\nHost: x\r\nX-A:  b \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/stream");
        assert_eq!(req.query, "n=3&delay_ms=10");
        assert_eq!(req.version, Version::Http11);
        assert_eq!(req.header("HOST"), Some("x"));
        assert_eq!(req.header("x-a"), Some("b"));
        assert!(req.body.is_empty());
        assert!(req.keep_alive());
    }

    #[test]
    fn reads_the_body_by_content_length_and_leaves_the_next_request() {
        let raw =
            "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\n\r\n";
        let mut reader = io::BufReader::new(raw.as_bytes());
        let first = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(first.body, b"hello");
        let second = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(second.path, "/healthz");
        assert!(read_request(&mut reader).unwrap().is_none(), "clean EOF");
    }

    #[test]
    fn decodes_a_chunked_body() {
        let raw = "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n";
        let req = parse(raw).unwrap().unwrap();
        assert_eq!(req.body, b"abcde");
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let close = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!close.keep_alive());
        let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive());
        let old_ka = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(old_ka.keep_alive());
    }

    #[test]
    fn rejects_malformed_requests() {
        for raw in [
            "GET\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno-colon\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        ] {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{raw:?}");
        }
    }

    #[test]
    fn a_truncated_request_is_an_error_not_a_clean_end() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").is_err());
        assert!(parse("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").is_err());
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn an_oversized_head_is_rejected() {
        let raw = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70 * 1024));
        assert_eq!(parse(&raw).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn parses_queries() {
        assert_eq!(
            parse_query("n=3&delay_ms=10&flag&a+b=c%20d&&bad=%zz&tail=%4"),
            vec![
                ("n".into(), "3".into()),
                ("delay_ms".into(), "10".into()),
                ("flag".into(), "".into()),
                ("a b".into(), "c d".into()),
                ("bad".into(), "%zz".into()),
                ("tail".into(), "%4".into()),
            ]
        );
        assert_eq!(query_param("n=1&n=2", "n").as_deref(), Some("1"));
        assert_eq!(query_param("", "n"), None);
        assert_eq!(query_param("x=%E2%9C%93", "x").as_deref(), Some("✓"));
    }

    #[test]
    fn writes_content_length_and_chunked_responses() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain", b"ok", true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
        );
        let mut out = Vec::new();
        let mut chunked = Chunked::start(&mut out, 200, "text/event-stream", false).unwrap();
        chunked.chunk(b"data: token-0\n\n").unwrap();
        chunked.chunk(b"").unwrap();
        chunked.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nf\r\ndata: token-0\n\n\r\n0\r\n\r\n"
        );
    }
}
