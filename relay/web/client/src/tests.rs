//! The ABI on the host, as the page drives it: a shell opened, accepted, its
//! output, typed bytes, a cut and a resume, the end; and bad input refused.

use std::sync::Mutex;

use agent_core::wire::{Bytes, ErrorCode, Exit, Frame, Stream};

use super::*;

/// The module has one state: one test at a time.
static LOCK: Mutex<()> = Mutex::new(());

/// Write `frame` where the page would, and hand it over.
fn deliver(frame: Frame<'_>) -> i32 {
    let st = state();
    let n = frame.encode(&mut st.input).unwrap();
    handle(n)
}

fn text() -> String {
    let ev = state().event;
    // SAFETY: the pointer and length describe bytes in the module's state.
    let bytes = unsafe { std::slice::from_raw_parts(ev[2] as *const u8, ev[3]) };
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn sent() -> Vec<Frame<'static>> {
    let mut frames = Vec::new();
    loop {
        let n = transmit();
        assert!(n >= 0, "transmit failed: {}", text());
        if n == 0 {
            return frames;
        }
        let bytes: &'static [u8] = Box::leak(state().output[..n as usize].to_vec().into());
        frames.push(Frame::decode(bytes).unwrap());
    }
}

/// While suspended, nothing goes but our `Resume` from `offset`.
fn only_our_place(offset: u64) {
    let frames = sent();
    assert!(
        matches!(frames.as_slice(), [Frame::Resume { ch: 0, offset: o, .. }] if *o == offset),
        "only our place goes while suspended: {frames:?}"
    );
}

fn typed(bytes: &[u8]) -> i32 {
    state().input[..bytes.len()].copy_from_slice(bytes);
    send(bytes.len())
}

#[test]
fn a_shell_runs_resumes_and_ends() {
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let n = open_shell(100, 30);
    assert!(n > 0);
    let open = Frame::decode(&state().output[..n as usize]).unwrap();
    assert!(
        matches!(
            open,
            Frame::Open {
                kind: Kind::Shell {
                    cols: 100,
                    rows: 30,
                    ..
                },
                ..
            }
        ),
        "{open:?}"
    );
    let token = "rt_first";
    assert_eq!(
        deliver(Frame::Resumable {
            sid: SID,
            hold: 600,
            token
        }),
        kind::RESUMABLE
    );
    assert_eq!((state().event[0], text()), (600, token.to_string()));
    assert_eq!(
        deliver(Frame::Accept {
            sid: SID,
            window: 1 << 16
        }),
        kind::ACCEPTED
    );

    let out = Frame::DataAt {
        sid: SID,
        ch: 0,
        stream: Stream::OUT,
        offset: 0,
        data: Bytes(b"42\r\n"),
    };
    assert_eq!(deliver(out), kind::DATA);
    assert_eq!(text(), "42\r\n");
    consumed(4);

    assert_eq!(typed(b"echo hi\r"), 8);
    resize(120, 40);
    let frames = sent();
    assert!(
        frames.iter().any(|f| matches!(
            f,
            Frame::Resize {
                cols: 120,
                rows: 40,
                ..
            }
        )),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::DataAt { offset: 0, data, .. } if data.0 == b"echo hi\r")),
        "{frames:?}"
    );

    // A new stream: reattach, the relay's new token and its Suspend, our Resume.
    assert_eq!(reattach(), 0);
    assert_eq!(
        deliver(Frame::Resumable {
            sid: SID,
            hold: 600,
            token: "rt_second"
        }),
        kind::RESUMABLE
    );
    assert_eq!(deliver(Frame::Suspend { sid: SID }), kind::SUSPENDED);
    assert_eq!(typed(b"ls\r"), 3, "typing goes on while suspended");
    only_our_place(4);
    // The agent had only the first 5 typed bytes: the rest goes again.
    let resume = Frame::Resume {
        sid: SID,
        ch: 0,
        offset: 5,
        limit: 5 + 65536,
        eof: false,
        open: true,
    };
    assert_eq!(deliver(resume), kind::RESUMED);
    let frames = sent();
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::DataAt { offset: 5, data, .. } if data.0 == b"hi\rls\r")),
        "{frames:?}"
    );

    // A reloaded page takes it up from what this one saved.
    let n = save();
    assert!(n > 0, "{}", text());
    assert_eq!(take_up(n as usize), 0);
    assert_eq!(deliver(Frame::Suspend { sid: SID }), kind::SUSPENDED);
    only_our_place(4);
    let resume = Frame::Resume {
        sid: SID,
        ch: 0,
        offset: 11,
        limit: 11 + 65536,
        eof: false,
        open: true,
    };
    assert_eq!(deliver(resume), kind::RESUMED);
    assert_eq!(take_up(3), ERROR, "{}", text());

    let end = Frame::Close {
        sid: SID,
        exit: Exit::Code(3),
        reason: "",
    };
    assert_eq!(deliver(end), kind::CLOSED);
    assert_eq!(state().event[..2], [0, 3]);
    assert_eq!(over(), 1);
}

#[test]
fn an_aborted_session_has_words_and_bad_input_is_an_error() {
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    open_shell(80, 24);
    assert_eq!(
        deliver(Frame::Accept {
            sid: SID,
            window: 1 << 16
        }),
        kind::ACCEPTED
    );
    // Garbage: an error with words, not a panic; the session is over.
    state().input[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(handle(3), ERROR);
    assert!(text().starts_with("protocol error"), "{}", text());
    assert!(
        sent().iter().any(|f| matches!(f, Frame::Close { .. })),
        "the relay hears why"
    );

    open_shell(80, 24);
    let end = Frame::Close {
        sid: SID,
        exit: Exit::Aborted(ErrorCode::AGENT_GONE),
        reason: "",
    };
    assert_eq!(deliver(end), kind::CLOSED);
    assert_eq!(
        (state().event[0], text()),
        (2, "the agent disconnected".to_string())
    );
}

#[test]
fn a_watch_decodes_size_output_and_end() {
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let st = state();
    let n = Frame::Resize {
        sid: 1,
        cols: 90,
        rows: 20,
    }
    .encode(&mut st.input)
    .unwrap();
    assert_eq!(decode(n), kind::RESIZE);
    assert_eq!(state().event[..2], [90, 20]);
    let n = Frame::Data {
        sid: 1,
        ch: 0,
        stream: Stream::OUT,
        data: Bytes(b"screen"),
    }
    .encode(&mut state().input)
    .unwrap();
    assert_eq!(decode(n), kind::DATA);
    assert_eq!(text(), "screen");
    assert_eq!(decode(0), ERROR);
}
