use std::io::Read;

use super::*;
use crate::record::format::{KindMeta, Meta};

use crate::record::tests::Dir;

fn exec_encoder() -> (Encoder, Vec<u8>) {
    Encoder::new(&Meta {
        session: "s-1".into(),
        target: "gw-01".into(),
        user: "alice".into(),
        account: "deploy".into(),
        timestamp: 1,
        kind: KindMeta::Exec {
            argv: vec!["true".into()],
        },
    })
}

fn out(data: &[u8]) -> Event {
    Event::Output {
        stderr: false,
        data: data.to_vec(),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    crate::secret::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

#[tokio::test]
async fn a_recording_is_on_disk_while_live_then_gzipped_with_its_hash() {
    let dir = Dir::new("live");
    let path = dir.0.join("s-1.exec.jsonl");
    let (enc, header) = exec_encoder();
    let mut f = File::create(&path).unwrap();
    f.write_all(&header).unwrap();
    let mut rec = Recorder::start(f, path.clone(), enc, true, (false, false, false));
    rec.record(out(b"first\n")).await.unwrap();
    // On disk within WRITE_EVERY, while the session goes on.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = std::fs::read_to_string(&path).unwrap();
        if now.contains("first") {
            break;
        }
        assert!(Instant::now() < deadline, "not written: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rec.record(out(b"second\n")).await.unwrap();
    let done = rec.finish(None).await.unwrap();
    assert_eq!(done["file"], "s-1.exec.jsonl.gz");
    assert!(!path.exists(), "the plain file stays");
    let gz = std::fs::read(dir.0.join("s-1.exec.jsonl.gz")).unwrap();
    assert_eq!(done["sha256"], sha256_hex(&gz));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].ends_with("\"stream\":\"stdout\",\"text\":\"first\\n\"}"));
    assert!(lines[2].ends_with("\"stream\":\"stdout\",\"text\":\"second\\n\"}"));
    assert!(lines[3].ends_with("\"exit\":null,\"reason\":\"\"}"));
}

/// `/dev/full` fails every write with ENOSPC, as a full disk does.
fn full_disk() -> File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap()
}

#[tokio::test]
async fn a_failed_write_ends_a_strict_session_with_the_reason() {
    let (enc, _) = exec_encoder();
    let mut rec = Recorder::start(
        full_disk(),
        "/dev/full".into(),
        enc,
        true,
        (false, false, false),
    );
    rec.record(out(b"lost\n")).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), rec.failed())
        .await
        .expect("the failure is heard of");
    assert_eq!(
        why,
        "recording failed: cannot write /dev/full: No space left on device (os error 28)"
    );
    // Anything recorded after it is refused with the same reason.
    assert_eq!(rec.record(out(b"more")).await, Err(why.clone()));
    assert_eq!(rec.finish(Some(&why)).await, Some(json!({ "error": why })));
}

#[tokio::test]
async fn a_failed_write_in_best_effort_mode_lets_the_session_go_on_unrecorded() {
    let (enc, _) = exec_encoder();
    let mut rec = Recorder::start(
        full_disk(),
        "/dev/full".into(),
        enc,
        false,
        (false, false, false),
    );
    rec.record(out(b"lost\n")).await.unwrap();
    // Best-effort: never a reason to end the session.
    let heard = tokio::time::timeout(Duration::from_millis(500), rec.failed()).await;
    assert!(heard.is_err());
    for _ in 0..10 {
        assert_eq!(rec.record(out(b"more")).await, Ok(()));
    }
    assert!(!rec.active());
    let why = "recording failed: cannot write /dev/full: No space left on device (os error 28)";
    assert_eq!(rec.finish(None).await, Some(json!({ "error": why })));
    assert_eq!(
        Recorder::unavailable("recording unavailable: x".into())
            .finish(None)
            .await,
        Some(json!({ "error": "recording unavailable: x" }))
    );
    assert_eq!(Recorder::off().finish(None).await, None);
}

// Real time: a paused clock does not advance while a blocking write is running.
#[tokio::test]
async fn a_writer_that_falls_behind_ends_a_strict_session() {
    // A pipe nobody reads: writes block once its buffer is full, as a stalled
    // disk would. The recording's path is a regular file, for the end.
    let dir = Dir::new("stall");
    let fifo = dir.0.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let stuck = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let path = dir.0.join("s-1.exec.jsonl");
    File::create(&path).unwrap();
    let (enc, _) = exec_encoder();
    let mut rec = Recorder::start(stuck, path, enc, true, (false, false, false));
    let chunk = vec![b'x'; 60_000];
    let mut queued = 0usize;
    let why = loop {
        match rec.record(out(&chunk)).await {
            Ok(()) => queued += chunk.len(),
            Err(why) => break why,
        }
        assert!(queued < 10 * QUEUE_BYTES, "never fell behind");
    };
    assert_eq!(
        why,
        "recording failed: the recording fell behind (more than 2 MiB waited over 5s to be written)"
    );
    assert!(queued >= QUEUE_BYTES - 64 * 1024, "{queued}");
    // Unblock the writer (read the pipe to its end) so that it can finish.
    let reader = std::thread::spawn(move || {
        let mut r = File::open(&fifo).unwrap();
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    let done = rec.finish(Some(&why)).await.unwrap();
    assert_eq!(done["file"], "s-1.exec.jsonl.gz");
    assert!(reader.join().unwrap() >= queued);
}
