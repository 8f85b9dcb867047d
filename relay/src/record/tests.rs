use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agent_core::wire::{Bytes, ErrorCode, Frame, Stream};

use super::*;

/// A fresh directory under the system's temporary one, removed on drop (the
/// writer's tests use it too).
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("sesame-record-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(mode: RecordingMode) -> config::Recordings {
    config::Recordings {
        mode,
        ..config::Recordings::default()
    }
}

fn shell(id: &str) -> Meta {
    Meta {
        session: id.into(),
        target: "gw-01".into(),
        user: "alice".into(),
        account: "deploy".into(),
        timestamp: 1_800_000_000,
        kind: KindMeta::Shell {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        },
    }
}

fn read_all(o: Opened) -> String {
    let mut s = String::new();
    let mut r = o.reader;
    r.read_to_string(&mut s).unwrap();
    s
}

#[tokio::test]
async fn a_recording_is_private_readable_live_up_to_whole_lines_then_compressed() {
    let data = Dir::new("live");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    assert_eq!(r.dir(), data.0.join("recordings"));
    let mut rec = r.start(shell("s-live"), false).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(r.dir()), 0o700);
    let plain = r.dir().join("s-live.cast");
    assert_eq!(mode(&plain), 0o600);
    assert!(r.exists("s-live"));
    assert!(!r.exists("s-other"));
    rec.record(Event::Output {
        stderr: false,
        data: b"hello\r\n".to_vec(),
    })
    .await
    .unwrap();
    tokio::time::sleep(writer::WRITE_EVERY * 3).await;
    // A line being written is not served until it is whole.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&plain)
        .unwrap()
        .write_all(b"[0.5, \"o\", \"hal")
        .unwrap();
    let o = r.open("s-live").unwrap().unwrap();
    assert!(o.live);
    assert_eq!(o.file, "s-live.cast");
    assert_eq!(o.suffix, CAST);
    let text = read_all(o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(
        lines[0].starts_with("{\"") && text.ends_with("\"hello\\r\\n\"]\n"),
        "{text:?}"
    );

    let done = rec.finish(None).await.unwrap();
    assert_eq!(done["file"], "s-live.cast.gz");
    assert!(!plain.exists());
    let o = r.open("s-live").unwrap().unwrap();
    assert!(!o.live);
    assert_eq!(o.file, "s-live.cast.gz");
    assert!(read_all(o).starts_with(&text));
    assert!(r.exists("s-live"));
    // Names that are not session ids reach no file.
    assert!(r.open("../recordings/s-live").unwrap().is_none());
    assert!(!r.exists("s-live.cast"));
}

#[tokio::test]
async fn a_recording_that_cannot_be_made_refuses_the_session_in_strict_mode_only() {
    let data = Dir::new("unwritable");
    // A file where the directory should be: root cannot write there either.
    std::fs::write(data.0.join("recordings"), b"").unwrap();
    let strict = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    let refused = strict.start(shell("s-1"), false).await.err().unwrap();
    assert_eq!(
        refused,
        format!(
            "recording unavailable: cannot create {}: File exists (os error 17)",
            strict.dir().display()
        )
    );
    let lenient = Recordings::new(&data.0, &settings(RecordingMode::BestEffort));
    let rec = lenient.start(shell("s-2"), false).await.unwrap();
    assert!(!rec.active());
    assert_eq!(
        rec.finish(None).await.unwrap()["error"],
        refused.replace("s-1", "s-2")
    );
    let off = Recordings::new(&data.0, &settings(RecordingMode::Off));
    let rec = off.start(shell("s-3"), false).await.unwrap();
    assert!(!rec.active());
    assert_eq!(rec.finish(None).await, None);
}

#[test]
fn old_recordings_go_but_never_a_live_sessions() {
    let data = Dir::new("prune");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    r.prepare().unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(91 * 86400);
    for name in [
        "s-old.cast.gz",
        "s-old2.exec.jsonl",
        "s-old3.forward.jsonl.gz.tmp",
        "s-live.cast",
        "notes.txt",
        "s-new.cast.gz",
    ] {
        let f = File::create(r.dir().join(name)).unwrap();
        if name != "s-new.cast.gz" {
            f.set_modified(old).unwrap();
        }
    }
    assert_eq!(r.prune(|id| id == "s-live"), 3);
    let mut left: Vec<String> = std::fs::read_dir(r.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "s-live.cast", "s-new.cast.gz"]);
    let keep = Recordings::new(
        &data.0,
        &config::Recordings {
            retention: None,
            ..settings(RecordingMode::Strict)
        },
    );
    assert_eq!(keep.prune(|_| false), 0);
}

#[test]
fn recordings_a_stopped_relay_left_are_compressed_at_start() {
    let data = Dir::new("recover");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    r.prepare().unwrap();
    std::fs::write(
        r.dir().join("s-a.cast"),
        b"{\"version\": 2}\n[0.1, \"o\", \"x\"]\n",
    )
    .unwrap();
    std::fs::write(r.dir().join("s-b.cast.gz"), b"not touched").unwrap();
    let recovered = r.recover();
    assert_eq!(recovered.len(), 1);
    let (id, done) = &recovered[0];
    assert_eq!(id, "s-a");
    let done = done.as_ref().unwrap();
    assert_eq!(done.file, "s-a.cast.gz");
    let gz = std::fs::read(r.dir().join("s-a.cast.gz")).unwrap();
    assert_eq!(
        done.sha256,
        crate::secret::hex(ring::digest::digest(&ring::digest::SHA256, &gz).as_ref())
    );
    assert_eq!(
        read_all(r.open("s-a").unwrap().unwrap()),
        "{\"version\": 2}\n[0.1, \"o\", \"x\"]\n"
    );
}

#[test]
fn frames_map_to_what_a_recording_keeps() {
    let data = |ch: u16, stream: Stream, d: &'static [u8]| Frame::Data {
        sid: 1,
        ch,
        stream,
        data: Bytes(d),
    };
    // From the agent: output (shell, exec) or a channel's bytes (forward).
    assert_eq!(
        agent_event(&data(0, Stream::ERR, b"oops"), false),
        Some(Event::Output {
            stderr: true,
            data: b"oops".to_vec()
        })
    );
    assert_eq!(
        agent_event(&data(3, Stream::OUT, b"abc"), true),
        Some(Event::ChannelData {
            ch: 3,
            to_dest: false,
            bytes: 3
        })
    );
    let close = Frame::Close {
        sid: 1,
        exit: Exit::Signal(9),
        reason: "",
    };
    assert_eq!(
        agent_event(&close, false),
        Some(Event::Exit {
            exit: Exit::Signal(9),
            reason: String::new()
        })
    );
    let reject = Frame::Reject {
        sid: 1,
        code: ErrorCode::NO_SUCH_USER,
        reason: "no such user",
    };
    assert_eq!(
        agent_event(&reject, false),
        Some(Event::Exit {
            exit: Exit::Aborted(ErrorCode::NO_SUCH_USER),
            reason: "no such user".into()
        })
    );
    let credit = Frame::Credit {
        sid: 1,
        ch: 0,
        bytes: 10,
    };
    assert_eq!(agent_event(&credit, false), None);
    // From the client: input only when recorded; resizes; channel opens and aborts.
    let typed = data(0, Stream::OUT, b"pw\r");
    assert_eq!(client_event(&typed, false, false), None);
    assert_eq!(
        client_event(&typed, true, false),
        Some(Event::Input(b"pw\r".to_vec()))
    );
    let resize = Frame::Resize {
        sid: 1,
        cols: 120,
        rows: 40,
    };
    assert_eq!(
        client_event(&resize, false, false),
        Some(Event::Resize {
            cols: 120,
            rows: 40
        })
    );
    assert_eq!(
        client_event(&data(2, Stream::OUT, b"GET /"), false, true),
        Some(Event::ChannelData {
            ch: 2,
            to_dest: true,
            bytes: 5
        })
    );
    let open = Frame::ChannelOpen {
        sid: 1,
        ch: 2,
        window: 1024,
        host: "db",
        port: 5432,
    };
    assert_eq!(
        client_event(&open, false, true),
        Some(Event::ChannelOpen {
            ch: 2,
            host: "db".into(),
            port: 5432
        })
    );
}

#[tokio::test]
async fn a_join_meets_the_file_exactly_and_hears_the_end() {
    let data = Dir::new("join-feed");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    let mut rec = r.start(shell("s-join"), false).await.unwrap();
    let out = |s: &str| Event::Output {
        stderr: false,
        data: s.as_bytes().to_vec(),
    };
    rec.record(out("one\r\n")).await.unwrap();
    rec.record(out("two\r\n")).await.unwrap();
    // Joined at once, before the writer's next write: what came before is on disk.
    let super::Joined {
        file,
        upto,
        mut feed,
    } = rec.watch().unwrap().join().await.unwrap();
    let (cols, rows, drawn) = super::join::screen(file, upto).unwrap();
    assert_eq!((cols, rows), (80, 24));
    assert!(drawn.contains("one") && drawn.contains("two"), "{drawn:?}");
    rec.record(out("three\r\n")).await.unwrap();
    rec.record(Event::Resize {
        cols: 100,
        rows: 30,
    })
    .await
    .unwrap();
    rec.finish(None).await.unwrap();
    assert_eq!(
        feed.recv().await,
        Some(super::Seen::Output(b"three\r\n".to_vec()))
    );
    assert_eq!(feed.recv().await, Some(super::Seen::Resize(100, 30)));
    assert_eq!(
        feed.recv().await,
        Some(super::Seen::End(None, "the session ended".into()))
    );
    assert_eq!(feed.recv().await, None);
    // Not a shell, or not recorded: nothing to join.
    let off = Recordings::new(&data.0, &settings(RecordingMode::Off));
    assert!(off
        .start(shell("s-off"), false)
        .await
        .unwrap()
        .watch()
        .is_none());
}

#[tokio::test]
async fn an_observer_that_falls_behind_is_dropped_and_the_session_goes_on() {
    let data = Dir::new("join-slow");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    let mut rec = r.start(shell("s-slow"), false).await.unwrap();
    let mut slow = rec.watch().unwrap().join().await.unwrap().feed;
    let n = writer::OBSERVER_QUEUE + 10;
    for i in 0..n {
        let data = format!("{i}\r\n").into_bytes();
        rec.record(Event::Output {
            stderr: false,
            data,
        })
        .await
        .unwrap();
    }
    let end = rec.finish(None).await.unwrap();
    assert!(end.get("sha256").is_some(), "{end}");
    let mut got = 0;
    while let Some(seen) = slow.recv().await {
        assert!(matches!(seen, super::Seen::Output(_)), "{seen:?}");
        got += 1;
    }
    // Its queue's worth, then closed without an end: it fell behind.
    assert_eq!(got, writer::OBSERVER_QUEUE);
}

#[tokio::test]
async fn a_session_that_ends_soon_after_output_is_not_held_for_the_write_tick() {
    let data = Dir::new("prompt-end");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    let mut rec = r.start(shell("s-prompt"), false).await.unwrap();
    let out = |s: &str| Event::Output {
        stderr: false,
        data: s.as_bytes().to_vec(),
    };
    // The first line is written at once; the next starts a gathering until the
    // writer's tick, and the end comes during it, as an exec's exit does.
    rec.record(out("up 0d 00:00:01\r\n")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    rec.record(out("done\r\n")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    let t = std::time::Instant::now();
    assert!(rec.finish(None).await.is_some());
    let took = t.elapsed();
    assert!(
        took < writer::WRITE_EVERY * 3 / 4,
        "finishing waited {took:?} for the writer's {:?} tick",
        writer::WRITE_EVERY
    );
}

#[tokio::test]
async fn a_resumable_session_is_recorded_once_across_a_resume_and_a_restart() {
    let data = Dir::new("resume");
    let r = Recordings::new(&data.0, &settings(RecordingMode::Strict));
    let mut rec = r.start(shell("s-res"), false).await.unwrap();
    rec.resumable((0, 0));
    let at = |offset: u64, data: &'static [u8]| {
        crate::agent_link::encode(&Frame::DataAt {
            sid: 1,
            ch: 0,
            stream: Stream::OUT,
            offset,
            data: Bytes(data),
        })
    };
    rec.agent_frame(&at(0, b"abcdef")).await.unwrap();
    // Sent again after a resume from offset 3: only "gh" is new.
    rec.agent_frame(&at(3, b"defgh")).await.unwrap();
    let plain = r.dir().join("s-res.cast");
    let kept = writer::offsets_path(&plain);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while writer::read_offsets(&plain) != Some((8, 0)) {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets not kept beside the file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The relay is killed (its files stay as they are; a writer that is merely
    // dropped would finish the recording, so it is put back as a kill leaves it).
    let (text_then, kept_then) = (
        std::fs::read(&plain).unwrap(),
        std::fs::read(&kept).unwrap(),
    );
    drop(rec);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_file(gz_path(&plain));
    std::fs::write(&plain, text_then).unwrap();
    std::fs::write(&kept, kept_then).unwrap();
    // The next run takes the session up again; the agent sends from offset 5 (what
    // its client had).
    let mut again = r.resume("s-res", "shell", false).await.unwrap();
    again.agent_frame(&at(5, b"fghij")).await.unwrap();
    let v = again.finish(None).await.unwrap();
    assert!(v.get("error").is_none(), "{v}");
    assert!(!kept.exists(), "the offsets go with the finished recording");
    let text = read_all(r.open("s-res").unwrap().unwrap());
    let output: String = text
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(output, "abcdefghij", "{text}");
}
