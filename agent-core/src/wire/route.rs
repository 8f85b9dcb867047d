//! Readdressing an encoded frame to another session without decoding it again: what
//! the relay does to every frame it routes between a client stream and an agent link.
//!
//! Every session-scoped frame starts with its frame type and its session id, both
//! varints (`docs/protocol.md`, section 2). Only that header changes; the rest of the
//! frame, payload included, stays where it is. A new id whose varint is no longer
//! than the old one is written in place; a longer one needs the header built again in
//! front of the rest ([`SidHeader::write`]).
//!
//! The caller must have decoded the frame ([`super::Frame::decode`]) to know that it
//! is well formed: these functions read only the header.

/// Longest header: a frame type and a session id of five varint bytes each.
pub const SID_HEADER_MAX: usize = 10;

/// The header of an encoded session-scoped frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidHeader {
    /// The frame type.
    pub frame_type: u32,
    /// The session id.
    pub sid: u32,
    /// Bytes the header takes at the start of the frame.
    pub len: usize,
}

/// Whether frames of this type start with a session id: all but `Hello`,
/// `Challenge`, `Auth`, `AuthOk`, `Ping` and `Pong`. (`Error` carries one too; 0
/// there means the whole connection.)
pub const fn has_sid(frame_type: u32) -> bool {
    matches!(frame_type, 4..=12 | 15..=26)
}

impl SidHeader {
    /// The header at the start of `frame`; `None` if the frame type carries no
    /// session id or the varints are cut short or too long.
    pub fn read(frame: &[u8]) -> Option<SidHeader> {
        let (frame_type, a) = varint(frame)?;
        if !has_sid(frame_type) {
            return None;
        }
        let (sid, b) = varint(frame.get(a..)?)?;
        Some(SidHeader {
            frame_type,
            sid,
            len: a + b,
        })
    }

    /// Write this header (its `frame_type` and `sid`; `len` is ignored) into `out`;
    /// returns the bytes written.
    pub fn write(&self, out: &mut [u8; SID_HEADER_MAX]) -> usize {
        let n = put_varint(self.frame_type, out);
        let (_, rest) = out.split_at_mut(n);
        n + put_varint(self.sid, rest)
    }
}

/// Readdress the encoded session-scoped frame in `frame` to session `sid`, in place,
/// if the new header is no longer than the old one. The frame then starts at the
/// returned offset (the new header ends where the old one did; bytes before the
/// offset are left over). `None` if the new header is longer, or `frame` has no
/// session id header; `frame` is then unchanged.
pub fn rewrite_sid(frame: &mut [u8], sid: u32) -> Option<usize> {
    let old = SidHeader::read(frame)?;
    let mut header = [0u8; SID_HEADER_MAX];
    let n = SidHeader { sid, ..old }.write(&mut header);
    let start = old.len.checked_sub(n)?;
    frame.get_mut(start..old.len)?.copy_from_slice(&header[..n]);
    Some(start)
}

/// A postcard (LEB128) varint of at most five bytes at the start of `buf`: its value
/// and length.
fn varint(buf: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, b) in buf.iter().take(5).enumerate() {
        v |= u32::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Write `v` as a varint into `out` (five bytes are always enough); returns its length.
fn put_varint(mut v: u32, out: &mut [u8]) -> usize {
    let mut i = 0;
    while let Some(b) = out.get_mut(i) {
        i += 1;
        if v < 0x80 {
            *b = v as u8;
            return i;
        }
        *b = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::super::{Bytes, Frame, Stream};
    use super::*;

    /// Encode a frame into a vector-like array.
    fn enc(f: &Frame) -> ([u8; 64], usize) {
        let mut buf = [0u8; 64];
        let n = f.encode(&mut buf).unwrap();
        (buf, n)
    }

    #[test]
    fn same_length_ids_are_rewritten_in_place() {
        // Credit{sid 1, ch 0, bytes 65536} (docs/protocol.md) to sid 5.
        let mut f = [0x08, 0x01, 0x00, 0x80, 0x80, 0x04];
        assert_eq!(rewrite_sid(&mut f, 5), Some(0));
        assert_eq!(f, [0x08, 0x05, 0x00, 0x80, 0x80, 0x04]);
    }

    #[test]
    fn shorter_ids_start_the_frame_later() {
        // Credit{sid 300, ...}: 300 is AC 02.
        let mut f = [0x08, 0xac, 0x02, 0x00, 0x80, 0x80, 0x04];
        assert_eq!(rewrite_sid(&mut f, 1), Some(1));
        assert_eq!(f[1..], [0x08, 0x01, 0x00, 0x80, 0x80, 0x04]);
    }

    #[test]
    fn longer_ids_need_a_new_header() {
        let mut f = [0x08, 0x01, 0x00, 0x80, 0x80, 0x04];
        assert_eq!(rewrite_sid(&mut f, 300), None);
        assert_eq!(f, [0x08, 0x01, 0x00, 0x80, 0x80, 0x04], "left unchanged");
        let h = SidHeader::read(&f).unwrap();
        assert_eq!(
            h,
            SidHeader {
                frame_type: 8,
                sid: 1,
                len: 2
            }
        );
        let mut out = [0u8; SID_HEADER_MAX];
        let n = SidHeader { sid: 300, ..h }.write(&mut out);
        assert_eq!(out[..n], [0x08, 0xac, 0x02]);
        let mut longest = [0u8; SID_HEADER_MAX];
        let n = SidHeader {
            frame_type: u32::MAX,
            sid: u32::MAX,
            len: 0,
        }
        .write(&mut longest);
        assert_eq!(n, SID_HEADER_MAX);
    }

    #[test]
    fn frames_without_a_session_id_are_not_touched() {
        let (mut ping, n) = enc(&Frame::Ping { nonce: 7 });
        assert_eq!(SidHeader::read(&ping[..n]), None);
        assert_eq!(rewrite_sid(&mut ping[..n], 1), None);
        for bad in [
            &[][..],
            &[0x08],
            &[0x08, 0x80],
            &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(SidHeader::read(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn a_rewritten_frame_decodes_as_the_same_frame_for_the_new_session() {
        let data = [0x5au8; 20];
        let frames = [
            Frame::Data {
                sid: 1,
                ch: 3,
                stream: Stream::OUT,
                data: Bytes(&data),
            },
            Frame::ChannelClose {
                sid: 200,
                ch: 9,
                reason: "gone",
            },
            Frame::Error {
                sid: 0,
                code: crate::wire::ErrorCode::PROTOCOL,
                message: "x",
            },
        ];
        for f in frames {
            for sid in [0, 1, 127, 128, 16_383, 16_384, u32::MAX] {
                let (mut buf, n) = enc(&f);
                let h = SidHeader::read(&buf[..n]).unwrap();
                assert_eq!(h.sid, f.sid().unwrap_or(0));
                let start = match rewrite_sid(&mut buf[..n], sid) {
                    Some(start) => start,
                    None => {
                        // Build it again: the new header, then the rest.
                        let mut out = [0u8; 64];
                        let mut header = [0u8; SID_HEADER_MAX];
                        let k = SidHeader { sid, ..h }.write(&mut header);
                        out[..k].copy_from_slice(&header[..k]);
                        out[k..k + n - h.len].copy_from_slice(&buf[h.len..n]);
                        let back = Frame::decode(&out[..k + n - h.len]).unwrap();
                        assert_eq!(back, f.with_sid(sid));
                        continue;
                    }
                };
                assert_eq!(Frame::decode(&buf[start..n]).unwrap(), f.with_sid(sid));
            }
        }
    }
}
