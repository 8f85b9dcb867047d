use super::*;
use agent_core::wire::ErrorCode;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn meta(kind: KindMeta) -> Meta {
    Meta {
        session: "s-1".into(),
        target: "gw-01".into(),
        user: "alice".into(),
        account: "deploy".into(),
        timestamp: 1_800_000_000,
        kind,
    }
}

fn text(out: &[u8]) -> &str {
    std::str::from_utf8(out).unwrap()
}

#[test]
fn utf8_split_across_chunks_is_held_until_complete() {
    let mut c = Utf8Carry::default();
    // "é" is C3 A9; "€" is E2 82 AC.
    assert_eq!(c.push(b"caf\xc3"), (b"caf".to_vec(), true));
    assert_eq!(c.push(b"\xa9 \xe2"), (b"\xc3\xa9 ".to_vec(), true));
    assert_eq!(c.push(b"\x82"), (Vec::new(), true));
    assert_eq!(c.push(b"\xac!"), (b"\xe2\x82\xac!".to_vec(), true));
    // An invalid byte is not held: it is invalid whatever follows.
    assert_eq!(c.push(b"a\xffb"), (b"a\xffb".to_vec(), false));
    assert_eq!(c.push(b"\xff\xf0\x9f"), (b"\xff".to_vec(), false));
    assert_eq!(c.finish(), b"\xf0\x9f".to_vec());
    assert_eq!(c.finish(), Vec::<u8>::new());
}

#[test]
fn times_are_exact_to_the_microsecond() {
    assert_eq!(secs(Duration::ZERO), "0.000000");
    assert_eq!(secs(Duration::from_nanos(1_234_567_891)), "1.234567");
    assert_eq!(secs(Duration::from_secs(3600)), "3600.000000");
}

#[test]
fn a_shell_is_an_asciicast_v2_with_output_resizes_and_whole_characters() {
    let m = meta(KindMeta::Shell {
        term: "xterm".into(),
        cols: 100,
        rows: 30,
    });
    let (mut enc, header) = Encoder::new(&m);
    let h: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(
        h,
        json!({
            "version": 2, "width": 100, "height": 30, "timestamp": 1_800_000_000,
            "title": "alice@gw-01 (deploy)", "env": {"TERM": "xterm"},
            "session": "s-1", "target": "gw-01", "user": "alice", "account": "deploy",
        })
    );
    assert_eq!(header.last(), Some(&b'\n'));
    let mut out = Vec::new();
    let output = |stderr: bool, data: &[u8]| Event::Output {
        stderr,
        data: data.to_vec(),
    };
    enc.push(ms(120), output(false, b"$ echo caf\xc3"), &mut out);
    enc.push(
        ms(250),
        output(false, b"\xa9\r\n\x1b[1mok\x1b[0m\r\n"),
        &mut out,
    );
    enc.push(ms(300), Event::Resize { cols: 80, rows: 24 }, &mut out);
    // Recorded only when the relay records input, which the stream task decides.
    enc.push(ms(310), Event::Input(b"ls\r".to_vec()), &mut out);
    enc.push(ms(400), output(true, b"bad \xff byte"), &mut out);
    enc.push(
        ms(500),
        Event::Exit {
            exit: Exit::Code(0),
            reason: String::new(),
        },
        &mut out,
    );
    enc.push(ms(600), output(false, b"\xe2\x82"), &mut out);
    enc.finish(ms(700), None, &mut out);
    assert_eq!(
        text(&out),
        "[0.120000, \"o\", \"$ echo caf\"]\n\
         [0.250000, \"o\", \"é\\r\\n\\u001b[1mok\\u001b[0m\\r\\n\"]\n\
         [0.300000, \"r\", \"80x24\"]\n\
         [0.310000, \"i\", \"ls\\r\"]\n\
         [0.400000, \"o\", \"bad \u{fffd} byte\"]\n\
         [0.700000, \"o\", \"\u{fffd}\"]\n"
    );
}

#[test]
fn a_shell_on_pipes_is_80x24_without_a_term() {
    let (_, header) = Encoder::new(&meta(KindMeta::Shell {
        term: String::new(),
        cols: 0,
        rows: 0,
    }));
    let h: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(
        (h["width"].clone(), h["height"].clone()),
        (json!(80), json!(24))
    );
    assert!(h.get("env").is_none(), "{h}");
}

#[test]
fn an_exec_keeps_stdout_stderr_apart_bytes_exact_and_its_exit_last() {
    let m = meta(KindMeta::Exec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo hi; echo oops >&2; exit 3".into(),
        ],
    });
    let (mut enc, header) = Encoder::new(&m);
    let h: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(
        h,
        json!({
            "version": 1, "kind": "exec", "timestamp": 1_800_000_000,
            "argv": ["sh", "-c", "echo hi; echo oops >&2; exit 3"],
            "session": "s-1", "target": "gw-01", "user": "alice", "account": "deploy",
        })
    );
    let mut out = Vec::new();
    enc.push(
        ms(10),
        Event::Output {
            stderr: false,
            data: b"hi\n\xc3".to_vec(),
        },
        &mut out,
    );
    enc.push(
        ms(11),
        Event::Output {
            stderr: true,
            data: b"oops\n".to_vec(),
        },
        &mut out,
    );
    enc.push(
        ms(12),
        Event::Output {
            stderr: false,
            data: b"\xa9\xff".to_vec(),
        },
        &mut out,
    );
    // Binary output is base64 even when it is valid UTF-8; terminal text is not.
    enc.push(
        ms(13),
        Event::Output {
            stderr: true,
            data: b"\0\0\x01".to_vec(),
        },
        &mut out,
    );
    enc.push(
        ms(14),
        Event::Output {
            stderr: true,
            data: b"\x1b[31mred\x1b[0m\t\x07\r\n".to_vec(),
        },
        &mut out,
    );
    enc.push(
        ms(20),
        Event::Exit {
            exit: Exit::Code(3),
            reason: String::new(),
        },
        &mut out,
    );
    enc.finish(ms(21), None, &mut out);
    assert_eq!(
        text(&out),
        "{\"t\":0.010000,\"stream\":\"stdout\",\"text\":\"hi\\n\"}\n\
         {\"t\":0.011000,\"stream\":\"stderr\",\"text\":\"oops\\n\"}\n\
         {\"t\":0.012000,\"stream\":\"stdout\",\"base64\":\"w6n/\"}\n\
         {\"t\":0.013000,\"stream\":\"stderr\",\"base64\":\"AAAB\"}\n\
         {\"t\":0.014000,\"stream\":\"stderr\",\"text\":\"\\u001b[31mred\\u001b[0m\\t\\u0007\\r\\n\"}\n\
         {\"t\":0.021000,\"exit\":{\"code\":3},\"reason\":\"\"}\n"
    );

    // Ended by the relay: the agent's answer (if any) and the relay's reason.
    let (mut enc, _) = Encoder::new(&m);
    let mut out = Vec::new();
    enc.push(
        ms(5),
        Event::Exit {
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "terminated".into(),
        },
        &mut out,
    );
    enc.finish(ms(6), Some("terminated by dave: incident 7"), &mut out);
    assert_eq!(
        text(&out),
        "{\"t\":0.006000,\"exit\":{\"aborted\":6},\"reason\":\"terminated by dave: incident 7\"}\n"
    );
    let (mut enc, _) = Encoder::new(&m);
    let mut out = Vec::new();
    enc.finish(ms(7), Some("client went away"), &mut out);
    assert_eq!(
        text(&out),
        "{\"t\":0.007000,\"exit\":null,\"reason\":\"client went away\"}\n"
    );
}

#[test]
fn a_forward_session_has_one_line_per_channel_and_none_of_its_bytes() {
    let (mut enc, header) = Encoder::new(&meta(KindMeta::Forward));
    let h: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(h["kind"], "forward");
    let mut out = Vec::new();
    let open = |ch: u16, port: u16| Event::ChannelOpen {
        ch,
        host: "127.0.0.1".into(),
        port,
    };
    enc.push(ms(100), open(1, 22), &mut out);
    enc.push(ms(110), Event::ChannelAccepted { ch: 1 }, &mut out);
    for (to_dest, bytes) in [(true, 40), (false, 1000), (true, 2)] {
        enc.push(
            ms(120),
            Event::ChannelData {
                ch: 1,
                to_dest,
                bytes,
            },
            &mut out,
        );
    }
    enc.push(ms(130), open(2, 9), &mut out);
    enc.push(
        ms(140),
        Event::ChannelRejected {
            ch: 2,
            reason: "connection refused".into(),
        },
        &mut out,
    );
    enc.push(
        ms(150),
        Event::ChannelDenied {
            ch: 3,
            host: "10.0.0.1".into(),
            port: 5432,
            reason: "denied: alice may not forward to 10.0.0.1:5432".into(),
        },
        &mut out,
    );
    enc.push(
        ms(2000),
        Event::ChannelClosed {
            ch: 1,
            reason: String::new(),
        },
        &mut out,
    );
    enc.push(ms(2100), open(4, 80), &mut out);
    enc.push(ms(2110), Event::ChannelAccepted { ch: 4 }, &mut out);
    enc.push(ms(2200), open(5, 81), &mut out);
    enc.push(
        ms(2300),
        Event::ChannelAbort {
            ch: 5,
            reason: String::new(),
        },
        &mut out,
    );
    enc.push(
        ms(2310),
        Event::ChannelClosed {
            ch: 5,
            reason: String::new(),
        },
        &mut out,
    );
    enc.finish(ms(3000), Some("client went away"), &mut out);
    let lines: Vec<Value> = text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"channel": 2, "host": "127.0.0.1", "port": 9, "opened": 0.13,
                   "accepted": null, "closed": 0.14, "bytes_in": 0, "bytes_out": 0,
                   "outcome": "rejected", "reason": "connection refused"}),
            json!({"channel": 3, "host": "10.0.0.1", "port": 5432, "opened": 0.15,
                   "accepted": null, "closed": 0.15, "bytes_in": 0, "bytes_out": 0,
                   "outcome": "denied",
                   "reason": "denied: alice may not forward to 10.0.0.1:5432"}),
            json!({"channel": 1, "host": "127.0.0.1", "port": 22, "opened": 0.1,
                   "accepted": 0.11, "closed": 2.0, "bytes_in": 42, "bytes_out": 1000,
                   "outcome": "closed", "reason": "end of stream"}),
            json!({"channel": 5, "host": "127.0.0.1", "port": 81, "opened": 2.2,
                   "accepted": null, "closed": 2.31, "bytes_in": 0, "bytes_out": 0,
                   "outcome": "closed", "reason": "closed by the client"}),
            json!({"channel": 4, "host": "127.0.0.1", "port": 80, "opened": 2.1,
                   "accepted": 2.11, "closed": 3.0, "bytes_in": 0, "bytes_out": 0,
                   "outcome": "closed", "reason": "session ended: client went away"}),
        ]
    );
}

#[test]
fn an_event_costs_its_bytes_and_a_fixed_overhead() {
    let e = Event::Output {
        stderr: false,
        data: vec![0; 1000],
    };
    assert_eq!(cost(&e), 1064);
    assert_eq!(cost(&Event::Resize { cols: 1, rows: 1 }), 64);
}
