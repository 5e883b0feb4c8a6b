//! Rewrites the HTTP/2 `:authority` of requests that arrive on the unix
//! socket.
//!
//! gRPC clients built on grpc-core (C++, Python, …) and grpc-java send the
//! socket's path, percent-encoded, as `:authority`. That is not a valid
//! URI authority, and the HTTP/2 library under tonic (h2) refuses such a
//! request with PROTOCOL_ERROR before our code sees it (hyperium/h2#487).
//! On a unix socket the authority means nothing, so this reader replaces
//! its value with `localhost` in the client's byte stream, before h2
//! parses it.
//!
//! It parses just enough: the connection preface, frame headers, and the
//! HPACK representations of each header block (RFC 7541 §6). Every field is
//! copied byte for byte except the value of a literal `:authority` field,
//! which becomes a plain (not Huffman-coded) `localhost`, or a prefix of it
//! no longer than the original encoded value. The replacement is never
//! longer than the original, so the server's HPACK dynamic table never
//! holds more bytes than the client's: it evicts no entry the client may
//! still refer to.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a peer may send before the server raises the limit,
/// which tonic does not do.
const MAX_FRAME: usize = 16_384;
const REPLACEMENT: &[u8] = b"localhost";
/// The most header-block bytes gathered across CONTINUATION frames; past
/// it the bytes pass through (h2 limits header lists to far less), so a
/// client cannot make us buffer without bound.
const MAX_BLOCK: usize = 256 << 10;
/// Index of `:authority` in the HPACK static table.
const AUTHORITY_INDEX: u64 = 1;

/// A stream whose incoming HTTP/2 header blocks get a usable authority.
pub struct RewriteAuthority<S> {
    inner: S,
    /// Bytes read from `inner` not yet parsed.
    input: Vec<u8>,
    /// Rewritten bytes not yet handed to the reader.
    output: Vec<u8>,
    out_pos: usize,
    preface_done: bool,
    /// A header block being gathered across CONTINUATION frames:
    /// (stream id, flags of the HEADERS frame, priority bytes, fragments).
    pending: Option<(u32, u8, Vec<u8>, Vec<u8>)>,
    /// After a parse failure, bytes pass through untouched; h2 will report
    /// the problem.
    passthrough: bool,
}

impl<S> RewriteAuthority<S> {
    pub fn new(inner: S) -> Self {
        RewriteAuthority {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            out_pos: 0,
            preface_done: false,
            pending: None,
            passthrough: false,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves whatever complete units `input` holds into `output`.
    fn process(&mut self) {
        if self.passthrough {
            self.output.append(&mut self.input);
            return;
        }
        if !self.preface_done {
            if self.input.len() < PREFACE_LEN {
                return;
            }
            self.output.extend(self.input.drain(..PREFACE_LEN));
            self.preface_done = true;
        }
        while self.input.len() >= FRAME_HEADER_LEN {
            let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            let gathered = self.pending.as_ref().map_or(0, |p| p.3.len());
            if len > MAX_FRAME || gathered + len > MAX_BLOCK {
                // More than h2 accepts: do not buffer it, let h2 refuse it.
                self.give_up();
                return;
            }
            if self.input.len() < FRAME_HEADER_LEN + len {
                return;
            }
            let kind = self.input[3];
            let flags = self.input[4];
            let stream =
                u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]])
                    & 0x7fff_ffff;
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
            let payload = &frame[FRAME_HEADER_LEN..];
            let handled = match kind {
                HEADERS if self.pending.is_none() => self.start_block(stream, flags, payload),
                CONTINUATION => self.continue_block(stream, flags, payload),
                _ if self.pending.is_none() => {
                    self.output.extend_from_slice(&frame);
                    Some(())
                }
                _ => None,
            };
            if handled.is_none() {
                // Not something we understand: hand over everything as it
                // came and stop interpreting.
                if let Some((stream, flags, priority, block)) = self.pending.take() {
                    emit_block(
                        &mut self.output,
                        stream,
                        flags & !END_HEADERS,
                        &priority,
                        &block,
                    );
                }
                self.output.extend_from_slice(&frame);
                self.passthrough = true;
                self.output.append(&mut self.input);
                return;
            }
        }
    }

    /// Hands over everything as it came and stops interpreting.
    fn give_up(&mut self) {
        if let Some((stream, flags, priority, block)) = self.pending.take() {
            emit_block(
                &mut self.output,
                stream,
                flags & !END_HEADERS,
                &priority,
                &block,
            );
        }
        self.passthrough = true;
        self.output.append(&mut self.input);
    }

    fn start_block(&mut self, stream: u32, flags: u8, payload: &[u8]) -> Option<()> {
        let mut p = payload;
        let mut pad = 0usize;
        if flags & PADDED != 0 {
            pad = *p.first()? as usize;
            p = &p[1..];
        }
        let mut priority = Vec::new();
        if flags & PRIORITY != 0 {
            priority = p.get(..5)?.to_vec();
            p = &p[5..];
        }
        let fragment = p.get(..p.len().checked_sub(pad)?)?;
        self.pending = Some((
            stream,
            flags & (END_STREAM | PRIORITY | END_HEADERS),
            priority,
            fragment.to_vec(),
        ));
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Some(())
    }

    fn continue_block(&mut self, stream: u32, flags: u8, payload: &[u8]) -> Option<()> {
        let pending = self.pending.as_mut()?;
        if pending.0 != stream {
            return None;
        }
        pending.3.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            pending.1 |= END_HEADERS;
            self.finish_block()?;
        }
        Some(())
    }

    fn finish_block(&mut self) -> Option<()> {
        let (stream, flags, priority, block) = self.pending.take()?;
        let rewritten = rewrite_block(&block)?;
        emit_block(&mut self.output, stream, flags, &priority, &rewritten);
        Some(())
    }
}

/// Writes a header block as one HEADERS frame, plus CONTINUATION frames if
/// it does not fit in one. `flags` carries END_STREAM, PRIORITY and
/// END_HEADERS (the last only when the block is complete).
fn emit_block(out: &mut Vec<u8>, stream: u32, flags: u8, priority: &[u8], block: &[u8]) {
    let first_room = MAX_FRAME - priority.len();
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let end_headers = flags & END_HEADERS;
    let mut head_flags = flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        head_flags |= end_headers;
    }
    frame_header(
        out,
        priority.len() + first.len(),
        HEADERS,
        head_flags,
        stream,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        frame_header(
            out,
            chunk.len(),
            CONTINUATION,
            if tail.is_empty() { end_headers } else { 0 },
            stream,
        );
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Reads an HPACK integer with an `n`-bit prefix at `b[*i]`.
fn read_int(b: &[u8], i: &mut usize, n: u32) -> Option<u64> {
    let mask = (1u16 << n) as u64 - 1;
    let mut v = *b.get(*i)? as u64 & mask;
    *i += 1;
    if v < mask {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*i)?;
        *i += 1;
        v = v.checked_add(((byte & 0x7f) as u64).checked_shl(shift)?)?;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        if shift > 56 {
            return None;
        }
    }
}

/// Skips an HPACK string literal; returns (huffman, bytes) of its contents.
fn read_string<'a>(b: &'a [u8], i: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = b.get(*i)? & 0x80 != 0;
    let len = read_int(b, i, 7)? as usize;
    let s = b.get(*i..i.checked_add(len)?)?;
    *i += len;
    Some((huffman, s))
}

/// Copies a header block, replacing the value of each literal `:authority`
/// field. `None` if the block is not valid HPACK.
fn rewrite_block(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let first = b[i];
        let prefix = if first & 0x80 != 0 {
            // Indexed field: nothing to change.
            read_int(b, &mut i, 7)?;
            out.extend_from_slice(&b[start..i]);
            continue;
        } else if first & 0x40 != 0 {
            6 // literal with incremental indexing
        } else if first & 0x20 != 0 {
            // Dynamic table size update.
            read_int(b, &mut i, 5)?;
            out.extend_from_slice(&b[start..i]);
            continue;
        } else {
            4 // literal without indexing, or never indexed
        };
        let index = read_int(b, &mut i, prefix)?;
        let is_authority = if index == 0 {
            let (huffman, name) = read_string(b, &mut i)?;
            !huffman && name == b":authority"
        } else {
            index == AUTHORITY_INDEX
        };
        let name_end = i;
        let (_, value) = read_string(b, &mut i)?;
        out.extend_from_slice(&b[start..name_end]);
        if is_authority && !value.is_empty() {
            let new = &REPLACEMENT[..REPLACEMENT.len().min(value.len())];
            out.push(new.len() as u8); // < 127, no Huffman bit
            out.extend_from_slice(new);
        } else {
            out.extend_from_slice(&b[name_end..i]);
        }
    }
    Some(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for RewriteAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.out_pos);
                buf.put_slice(&this.output[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.output.len() {
                    this.output.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // End of stream: release anything held back.
                    this.output.append(&mut this.input);
                    if this.output.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(rb.filled());
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RewriteAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(kind: u8, index: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![kind | index, value.len() as u8];
        v.extend_from_slice(value);
        v
    }

    fn rewrite_stream(input: &[u8]) -> Vec<u8> {
        let mut r = RewriteAuthority::new(tokio::io::empty());
        // Feed byte by byte: frames split anywhere must work.
        for b in input {
            r.input.push(*b);
            r.process();
        }
        r.output.append(&mut r.input);
        r.output
    }

    #[test]
    fn authority_values_are_replaced_other_fields_kept() {
        let path = b"%2Frun%2Fnativelink-lre%2Fsocket";
        let mut block = vec![0x82]; // :method GET (indexed)
        block.extend(literal(0x40, 1, path)); // :authority, incremental indexing
        block.extend(literal(
            0x00,
            4,
            b"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
        ));
        block.extend(literal(0x10, 1, b"ab")); // never-indexed :authority, short
        block.extend([0x3f, 0xe1, 0x1f]); // table size update 4096
        let out = rewrite_block(&block).unwrap();
        let mut want = vec![0x82];
        want.extend(literal(0x40, 1, b"localhost"));
        want.extend(literal(
            0x00,
            4,
            b"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
        ));
        want.extend(literal(0x10, 1, b"lo"));
        want.extend([0x3f, 0xe1, 0x1f]);
        assert_eq!(out, want);
        // A literal name ":authority" counts too.
        let mut named = vec![0x40, 10];
        named.extend_from_slice(b":authority");
        named.extend(literal(0, 0, b"/tmp/sock").split_off(1));
        let out = rewrite_block(&named).unwrap();
        assert!(out.ends_with(b"\x09localhost"), "{out:?}");
    }

    #[test]
    fn frames_are_rebuilt_around_the_new_block() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS (empty), then HEADERS split into HEADERS + CONTINUATION,
        // with padding and priority, then DATA.
        frame_header(&mut input, 0, 0x4, 0, 0);
        let block_a = literal(0x40, 1, b"%2Ftmp%2Fs");
        let block_b = vec![0x82];
        let mut payload = vec![2]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(&block_a);
        payload.extend([0, 0]);
        frame_header(&mut input, payload.len(), HEADERS, PADDED | PRIORITY, 1);
        input.extend(&payload);
        frame_header(&mut input, block_b.len(), CONTINUATION, END_HEADERS, 1);
        input.extend(&block_b);
        frame_header(&mut input, 3, 0x0, END_STREAM, 1);
        input.extend(b"abc");

        let out = rewrite_stream(&input);
        let mut want = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame_header(&mut want, 0, 0x4, 0, 0);
        let mut block = literal(0x40, 1, b"localhost");
        block.truncate(2 + 9);
        block[1] = 9;
        block.extend(&block_b);
        frame_header(
            &mut want,
            5 + block.len(),
            HEADERS,
            PRIORITY | END_HEADERS,
            1,
        );
        want.extend([0, 0, 0, 0, 16]);
        want.extend(&block);
        frame_header(&mut want, 3, 0x0, END_STREAM, 1);
        want.extend(b"abc");
        assert_eq!(out, want);
    }

    #[test]
    fn malformed_input_passes_through() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame_header(&mut input, 2, HEADERS, END_HEADERS, 1);
        input.extend([0x40, 0xff]); // truncated integer
        input.extend(b"trailing");
        assert_eq!(rewrite_stream(&input), input);
    }
}
