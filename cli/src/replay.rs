//! `sesame replay ID [--speed X] [--idle-limit SECS]`: a session's recording
//! played in the terminal with its timing: a shell's output (asciicast v2 `o`
//! events), or an exec's stdout and stderr on ours. Needs the action `replay` on
//! the session; the relay records each read in its audit log. A live session's
//! recording plays up to now.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use serde_json::Value;

use crate::client::{encode, Relay};

/// `sesame replay`.
#[derive(Debug, Args)]
pub struct Replay {
    /// Session id (s-...).
    pub id: String,
    /// Play this many times faster (0.5 is half speed).
    #[arg(long, default_value_t = 1.0, value_parser = speed)]
    pub speed: f64,
    /// Cap every pause at this many seconds (of the recording).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub idle_limit: Option<f64>,
}

fn speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!(
            "invalid speed '{s}': a number above 0, e.g. 2 or 0.5"
        )),
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("invalid idle limit '{s}': seconds, e.g. 2 or 0.5")),
    }
}

/// Where a piece of output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// Our stdout.
    Stdout,
    /// Our stderr.
    Stderr,
}

/// One piece of output, `at` seconds into the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Seconds since the recording started.
    pub at: f64,
    /// Where it goes.
    pub to: To,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The output of a recording (asciicast v2, or an exec record), in order.
/// Lines that do not parse are skipped (a live recording's last one may be cut).
pub fn outputs(text: &str) -> Result<Vec<Output>, String> {
    let mut lines = text.lines();
    let header: Value = lines
        .next()
        .and_then(|h| serde_json::from_str(h).ok())
        .ok_or("the recording has no header")?;
    let kind = header["kind"].as_str();
    let mut out = Vec::new();
    match kind {
        Some("exec") => {
            for l in lines {
                let Ok(v) = serde_json::from_str::<Value>(l) else {
                    continue;
                };
                let (Some(at), Some(stream)) = (v["t"].as_f64(), v["stream"].as_str()) else {
                    continue;
                };
                let to = match stream {
                    "stdout" => To::Stdout,
                    "stderr" => To::Stderr,
                    _ => continue,
                };
                let data = match (v["text"].as_str(), v["base64"].as_str()) {
                    (Some(t), _) => t.as_bytes().to_vec(),
                    (None, Some(b)) => base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|e| format!("bad base64 in the recording: {e}"))?,
                    _ => continue,
                };
                out.push(Output { at, to, data });
            }
        }
        Some("forward") => {
            return Err(
                "a forward session has no output to play; `sesame sessions export ID` shows its channels"
                    .into(),
            )
        }
        _ if header["version"] == 2 => {
            for l in lines {
                let Ok(v) = serde_json::from_str::<Value>(l) else {
                    continue;
                };
                if let (Some(at), Some("o"), Some(t)) = (v[0].as_f64(), v[1].as_str(), v[2].as_str())
                {
                    out.push(Output {
                        at,
                        to: To::Stdout,
                        data: t.as_bytes().to_vec(),
                    });
                }
            }
        }
        _ => return Err("not a recording this sesame can play".into()),
    }
    Ok(out)
}

/// When each output is due, from the start of the replay: the pauses between
/// outputs capped at `idle_limit` (recording seconds), then divided by `speed`.
pub fn schedule(outputs: &[Output], speed: f64, idle_limit: Option<f64>) -> Vec<Duration> {
    let (mut prev, mut due) = (0.0f64, 0.0f64);
    outputs
        .iter()
        .map(|o| {
            let mut gap = (o.at - prev).max(0.0);
            if let Some(limit) = idle_limit {
                gap = gap.min(limit);
            }
            prev = o.at.max(prev);
            due += gap / speed;
            Duration::from_secs_f64(due)
        })
        .collect()
}

/// Run `sesame replay`.
pub async fn run(relay: &Relay, r: &Replay) -> anyhow::Result<()> {
    let path = format!("/v1/sessions/{}/recording", encode(&r.id));
    let body = relay.get_bytes(&path).await?;
    let text = String::from_utf8_lossy(&body);
    let outs = outputs(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let due = schedule(&outs, r.speed, r.idle_limit);
    let start = tokio::time::Instant::now();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    for (o, due) in outs.iter().zip(due) {
        tokio::time::sleep_until(start + due).await;
        let w: &mut dyn Write = match o.to {
            To::Stdout => &mut stdout,
            To::Stderr => &mut stderr,
        };
        w.write_all(&o.data)?;
        w.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cast_plays_its_output_and_an_exec_its_streams() {
        let cast = "{\"version\": 2, \"width\": 80, \"height\": 24}\n\
                    [0.5, \"o\", \"$ \"]\n[0.7, \"i\", \"x\"]\n[1.0, \"r\", \"90x30\"]\n\
                    [2.25, \"o\", \"caf\u{e9}\\r\\n\"]\n[3.0, \"o\", \"cut";
        assert_eq!(
            outputs(cast).unwrap(),
            vec![
                Output {
                    at: 0.5,
                    to: To::Stdout,
                    data: b"$ ".to_vec()
                },
                Output {
                    at: 2.25,
                    to: To::Stdout,
                    data: "caf\u{e9}\r\n".as_bytes().to_vec()
                },
            ]
        );
        let exec = "{\"version\":1,\"kind\":\"exec\",\"argv\":[\"x\"]}\n\
                    {\"t\":0.1,\"stream\":\"stdout\",\"text\":\"out\\n\"}\n\
                    {\"t\":0.2,\"stream\":\"stderr\",\"base64\":\"/w==\"}\n\
                    {\"t\":0.3,\"exit\":{\"code\":0},\"reason\":\"\"}\n";
        let outs = outputs(exec).unwrap();
        assert_eq!(outs.len(), 2);
        assert_eq!((outs[1].to, outs[1].data.clone()), (To::Stderr, vec![0xff]));
        assert_eq!(
            outputs("{\"version\":1,\"kind\":\"forward\"}\n").unwrap_err(),
            "a forward session has no output to play; `sesame sessions export ID` shows its channels"
        );
        assert!(outputs("").is_err());
    }

    #[test]
    fn pauses_are_capped_then_scaled() {
        let at = |at: f64| Output {
            at,
            to: To::Stdout,
            data: Vec::new(),
        };
        let outs = [at(1.0), at(1.5), at(31.5), at(32.0)];
        let ms = |v: Vec<Duration>| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(schedule(&outs, 1.0, None)), [1000, 1500, 31500, 32000]);
        assert_eq!(
            ms(schedule(&outs, 1.0, Some(2.0))),
            [1000, 1500, 3500, 4000]
        );
        assert_eq!(ms(schedule(&outs, 2.0, Some(2.0))), [500, 750, 1750, 2000]);
        assert_eq!(ms(schedule(&outs, 100.0, None)), [10, 15, 315, 320]);
    }
}
