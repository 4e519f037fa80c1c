//! JSON bodies for the answers hyper gives before any handler runs. A
//! request hyper cannot parse (a malformed request line, a URI or headers
//! over its limits, an HTTP version it does not speak) is answered by hyper
//! itself, with an empty body, and hyper offers no hook to change that
//! answer. This wraps the connection: such an answer (an error status, no
//! body, no content type, which no handler of ours writes) is replaced on
//! its way out by the same status with the API's error body.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose parser-level error answers carry JSON.
#[derive(Debug)]
pub struct JsonParseErrors<S> {
    inner: S,
    /// A replacement answer not yet fully written.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonParseErrors<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The code and text of each answer hyper writes itself.
fn explain(status: &[u8]) -> Option<(&'static str, &'static str)> {
    Some(match status {
        b"400" => (
            "bad_request",
            "the request is not valid HTTP/1.1: its request line, a header or its framing does not parse",
        ),
        b"414" => ("uri_too_long", "the request's URI is longer than this server accepts"),
        b"431" => (
            "headers_too_large",
            "the request's headers are larger (or more) than this server accepts",
        ),
        b"505" => (
            "http_version_not_supported",
            "this server speaks HTTP/1.1 (and 1.0) only",
        ),
        _ => return None,
    })
}

/// The answer to write instead of `head`, when `head` is one of hyper's own
/// empty error answers.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") || !text.starts_with("HTTP/1.") {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let mut lines = text.trim_end().split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?;
    let (code, message) = explain(status.as_bytes())?;
    let body =
        serde_json::json!({ "error": code, "message": message, "details": null }).to_string();
    let mut out = format!("{status_line}\r\ncontent-type: application/json\r\n");
    for line in lines.filter(|l| !l.to_ascii_lowercase().starts_with("content-length:")) {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    Some(out.into_bytes())
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    /// Writes what is left of a replacement.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written, to send its replacement in its place.
    fn replace(
        &mut self,
        cx: &mut Context<'_>,
        with: Vec<u8>,
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        self.pending = with;
        self.written = 0;
        match self.drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // The rest goes out on the next write, flush or shutdown.
            _ => Poll::Ready(Ok(len)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        match replacement(buf) {
            Some(with) => self.replace(cx, with, buf.len()),
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        // An answer without a body is one slice.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            if let Some(with) = replacement(only) {
                return self.replace(cx, with, only.len());
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::replacement;

    #[test]
    fn hypers_empty_error_answers_get_the_error_body() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 20:34:50 GMT\r\n\r\n";
        let out = String::from_utf8(replacement(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n"));
        assert!(head.contains("connection: close") && head.contains("date: Sun"));
        assert!(head.ends_with(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "uri_too_long");
    }

    #[test]
    fn answers_of_handlers_pass_unchanged() {
        // A handler's error has a body and a type; a 204 is no error.
        let json = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(json).is_none());
        let ok = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert!(replacement(with_body).is_none());
    }
}
