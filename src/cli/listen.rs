//! The listen address: checked when the command line is read (`--listen 8080` is a usage error
//! with the form to use, not "invalid socket address" at exit 1), and a busy port explained.

use std::io::ErrorKind;

/// clap's parser for `--listen`: `HOST:PORT` (`[::1]:8080` for IPv6; port 0 picks a free port).
pub(super) fn parse_listen(s: &str) -> Result<String, String> {
    let hint = "give HOST:PORT, e.g. 127.0.0.1:8080 (this machine only) or 0.0.0.0:8080 (every interface); \
                port 0 picks a free port";
    let s = s.trim();
    if s.parse::<u16>().is_ok() {
        return Err(format!("{s} is only a port: {hint}"));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not HOST:PORT: {hint}")),
    }
}

/// `e` with a hint when binding `listen` failed because the port is taken.
pub(super) fn explain_bind_error(e: anyhow::Error, listen: &str) -> anyhow::Error {
    let in_use =
        e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::AddrInUse));
    if in_use {
        e.context(format!(
            "{listen} is already in use by another process (another jetstream?): stop it, or choose another \
             address with --listen HOST:PORT (port 0 picks a free one)"
        ))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_is_refused_with_the_form_to_use() {
        assert!(parse_listen("8080").unwrap_err().contains("HOST:PORT"));
        assert!(parse_listen("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_listen(":8080").is_err());
        for ok in ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "localhost:9000"] {
            assert_eq!(parse_listen(ok).as_deref(), Ok(ok));
        }
    }
}
