//! What the command line reads besides its arguments: a message's text from stdin or a file,
//! addresses that say what a valid one looks like, the passphrase file.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use libp2p::Multiaddr;
use palaver_protocol::wire::MAX_TEXT_LEN;

/// A message's text: `text` as given, stdin for `-`, or the contents of `file` — at most
/// [`MAX_TEXT_LEN`] bytes of UTF-8 (read no further than that), with one trailing newline (what
/// `echo` and editors add) dropped.
pub(crate) fn message_text(text: Option<String>, file: Option<&Path>) -> anyhow::Result<String> {
    let (bytes, source) = match (text, file) {
        (Some(_), Some(_)) => bail!("give the text or --file, not both"),
        (Some(text), None) if text != "-" => return Ok(text),
        (Some(_), None) => (read_bounded(std::io::stdin().lock())?, "stdin".to_owned()),
        (None, Some(path)) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
            (read_bounded(file)?, path.display().to_string())
        }
        (None, None) => bail!("no text: give it as an argument, `-` to read stdin, or --file PATH"),
    };
    let mut bytes = bytes;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() > MAX_TEXT_LEN {
        bail!(
            "the text from {source} is longer than {MAX_TEXT_LEN} bytes, the most one message \
             carries; split it into several messages"
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the text from {source} is not UTF-8"))?;
    Ok(text)
}

/// Up to three bytes more than a message may hold: a trailing "\r\n" and one byte to tell the
/// text is too long.
fn read_bounded(reader: impl Read) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_TEXT_LEN as u64 + 3)
        .read_to_end(&mut bytes)
        .context("reading the message text")?;
    Ok(bytes)
}

/// clap's parser for address flags: a multiaddr, or an error that shows what one looks like
/// (and the multiaddr for `host:port`, the usual mistake).
pub(crate) fn multiaddr(typed: &str) -> Result<Multiaddr, String> {
    if let Ok(addr) = typed.parse::<Multiaddr>() {
        return Ok(addr);
    }
    let hint = match typed.parse::<std::net::SocketAddr>() {
        Ok(std::net::SocketAddr::V4(v4)) => {
            format!("; for {typed} write /ip4/{}/tcp/{}", v4.ip(), v4.port())
        }
        Ok(std::net::SocketAddr::V6(v6)) => {
            format!("; for {typed} write /ip6/{}/tcp/{}", v6.ip(), v6.port())
        }
        Err(_) => String::new(),
    };
    Err(format!(
        "{typed:?} is not a multiaddr{hint} (a valid one looks like /ip4/203.0.113.7/tcp/4001, \
         /dns4/chat.example.org/udp/4001/quic-v1 or /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…)"
    ))
}

/// A size as people write it: `5000`, `16MiB`, `2GiB`, `512K`, `1.5G` (binary units).
pub(crate) fn size(typed: &str) -> Result<u64, String> {
    let typed = typed.trim();
    let split = typed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(typed.len());
    let (number, unit) = typed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use B, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{typed:?} is not a size like 500MiB or 2GiB"))?;
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{typed:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// The passphrase in the first line of `path`; an empty one is refused rather than taken as
/// "no passphrase" (which would leave the key unsealed without a word).
pub(crate) fn passphrase_file(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let passphrase = text.lines().next().unwrap_or_default();
    if passphrase.is_empty() {
        bail!(
            "the passphrase file {} is empty: its first line is the passphrase",
            path.display()
        );
    }
    Ok(passphrase.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_too_long_for_one_message_is_refused_and_one_that_fits_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("long");
        std::fs::write(&long, "x".repeat(MAX_TEXT_LEN + 1)).unwrap();
        let err = message_text(None, Some(&long)).unwrap_err().to_string();
        assert!(err.contains(&MAX_TEXT_LEN.to_string()), "{err}");
        let fits = dir.path().join("fits");
        std::fs::write(&fits, format!("{}\n", "y".repeat(MAX_TEXT_LEN))).unwrap();
        assert_eq!(
            message_text(None, Some(&fits)).unwrap(),
            "y".repeat(MAX_TEXT_LEN)
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size("5000"), Ok(5000));
        assert_eq!(size("16MiB"), Ok(16 << 20));
        assert_eq!(size("2 GiB"), Ok(2 << 30));
        assert_eq!(size("512k"), Ok(512 << 10));
        assert_eq!(size("1.5G"), Ok(3 << 29));
        assert!(size("12 parsecs").unwrap_err().contains("unknown unit"));
        assert!(size("MiB").is_err());
        assert!(size("99999999999T").is_err());
    }

    #[test]
    fn a_host_and_port_gets_the_multiaddr_it_meant() {
        let err = multiaddr("127.0.0.1:4001").unwrap_err();
        assert!(err.contains("/ip4/127.0.0.1/tcp/4001"), "{err}");
        assert!(multiaddr("garbage").unwrap_err().contains("/ip4/"));
        assert!(multiaddr("/ip4/127.0.0.1/tcp/4001").is_ok());
    }
}
