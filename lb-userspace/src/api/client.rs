//! The CLI's side of the control socket: one request, one answer.

use std::path::Path;

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{Request, Response};

/// Errors of a CLI call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent is listening on {path} (start one with `lb agent`, or set --socket / LB_SOCKET)"
    )]
    NoAgent { path: String },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent on {path} closed the connection without answering")]
    NoAnswer { path: String },
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends one request to the agent and returns its response.
///
/// # Errors
/// No agent, a broken connection or an undecodable answer.
pub async fn call(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = path.display().to_string();
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NoAgent { path: p.clone() }
            }
            _ => ClientError::Io {
                path: p.clone(),
                source: e,
            },
        })?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    let io = |source| ClientError::Io {
        path: p.clone(),
        source,
    };
    stream.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    let n = reader
        .read_line(&mut answer)
        .await
        .map_err(|source| ClientError::Io {
            path: p.clone(),
            source,
        })?;
    if n == 0 {
        return Err(ClientError::NoAnswer { path: p });
    }
    Ok(serde_json::from_str(&answer)?)
}
