//! `sesame join ID`: watch a live shell session, read-only, as its user sees it:
//! the screen as it is now, then its output as it happens, until the session ends
//! or you leave (Ctrl-C, or `q`). Needs the action `observe` on the session; the
//! relay records the join in its audit log and tells the session's user.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use agent_core::wire::{ErrorCode, Exit, Frame, Stream};

use crate::client::Relay;
use crate::session::{encode, lost_relay, stdin_reader};
use crate::terminal;

/// `sesame join`.
#[derive(Debug, clap::Args)]
pub struct Join {
    /// Session id (s-...), from `sesame sessions ls --all`.
    pub id: String,
}

/// Keys that leave: Ctrl-C, `q`, Ctrl-D.
fn leaves(input: &[u8]) -> bool {
    input.iter().any(|b| matches!(b, 3 | b'q' | b'Q' | 4))
}

/// Watch session `j.id` until it ends (exit 0) or the user leaves.
pub async fn run(relay: &Relay, j: &Join) -> anyhow::Result<i32> {
    let path = format!("/v1/sessions/{}/join", crate::client::encode(&j.id));
    let mut ws = relay.open_api_socket(&path).await?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let raw = if interactive {
        Some(terminal::RawMode::enable().context("cannot put the terminal in raw mode")?)
    } else {
        None
    };
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdin = stdin_reader();
    let mut stdin_open = true;
    let say = |line: String| format!("\r\nsesame: {}\r\n", terminal::printable(&line));
    let outcome = loop {
        tokio::select! {
            msg = ws.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break Err(lost_relay(&j.id, None)),
                    Some(Err(e)) => break Err(lost_relay(&j.id, Some(&e))),
                    Some(Ok(_)) => continue,
                };
                match Frame::decode(&bytes) {
                    Ok(Frame::Data { stream: Stream::OUT, data, .. }) => {
                        stdout.write_all(data.0).await?;
                        stdout.flush().await?;
                    }
                    Ok(Frame::Resize { cols, rows, .. }) => {
                        // The session's terminal: ours may not fit it.
                        let ours = terminal::size();
                        if ours.is_some_and(|(c, r)| c < cols || r < rows) {
                            let (c, r) = ours.unwrap_or_default();
                            let line = say(format!("the session's terminal is {cols}x{rows}, yours is {c}x{r}: some of it may not show"));
                            stderr.write_all(line.as_bytes()).await?;
                            stderr.flush().await?;
                        }
                    }
                    Ok(Frame::Notice { message, .. }) => {
                        stderr.write_all(say(message.into()).as_bytes()).await?;
                        stderr.flush().await?;
                    }
                    Ok(Frame::Close { exit, reason, .. }) => {
                        let ok = !matches!(exit, Exit::Aborted(c) if c != ErrorCode::TERMINATED);
                        break if ok { Ok(reason.to_string()) } else { Err(anyhow::anyhow!("{reason}")) };
                    }
                    Ok(_) | Err(agent_core::DecodeError::UnknownFrame { .. }) => {}
                    Err(e) => break Err(anyhow::anyhow!("malformed frame from the relay: {e}")),
                }
            }
            chunk = stdin.recv(), if stdin_open => match chunk {
                Some(input) if leaves(&input) => break Ok("you left".to_string()),
                Some(_) => {} // read-only: keys do not reach the session
                None => stdin_open = false,
            },
        }
    };
    let _ = ws
        .send(encode(&Frame::Close {
            sid: 1,
            exit: Exit::Aborted(ErrorCode::TERMINATED),
            reason: "observer left",
        }))
        .await;
    let _ = ws.close(None).await;
    drop(raw);
    match outcome {
        Ok(line) => {
            eprintln!("\nsesame: {}", terminal::printable(&line));
            Ok(0)
        }
        Err(e) => bail!("{e}"),
    }
}
