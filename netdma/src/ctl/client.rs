//! A client of the control socket, as `netdmactl` uses it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::*;
use super::CtlError;

/// A connection to a control socket, for `netdmactl` and tests.
#[derive(Debug)]
pub struct CtlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl CtlClient {
    /// Connects to the server at `path`. Replies are awaited at most 30 s.
    pub fn connect(path: impl AsRef<Path>) -> Result<CtlClient, CtlError> {
        let path = path.as_ref().to_path_buf();
        let conn_err = |source| CtlError::Connect {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(&path).map_err(conn_err)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(conn_err)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(conn_err)?;
        let writer = stream.try_clone().map_err(conn_err)?;
        Ok(CtlClient {
            path,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `req` and waits for its reply.
    pub fn request(&mut self, req: &Request) -> Result<Response, CtlError> {
        let line = serde_json::to_string(req).map_err(|e| CtlError::BadReply {
            path: self.path.clone(),
            message: format!("cannot serialize the request: {e}"),
        })?;
        self.request_line(&line)
    }

    /// Sends one raw line (a newline is added) and waits for its reply.
    pub fn request_line(&mut self, line: &str) -> Result<Response, CtlError> {
        let conn_err = |source| CtlError::Connect {
            path: self.path.clone(),
            source,
        };
        let mut out = line.as_bytes().to_vec();
        out.push(b'\n');
        self.writer.write_all(&out).map_err(conn_err)?;
        self.writer.flush().map_err(conn_err)?;
        self.read_reply()
    }

    /// Reads the next reply line.
    pub fn read_reply(&mut self) -> Result<Response, CtlError> {
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .map_err(|source| CtlError::Connect {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(CtlError::NoReply {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&reply).map_err(|e| CtlError::BadReply {
            path: self.path.clone(),
            message: format!("{e}: {}", reply.trim_end()),
        })
    }
}
