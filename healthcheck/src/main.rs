//! `healthcheck [URL]`: exits 0 when `GET URL` answers 2xx within 2 seconds, 1 otherwise.
//! Without URL it probes `http://127.0.0.1:$HTTP_PORT/health/ready`. Used as the container
//! health check of the service images, which have no curl or wget. Plain `http://` only.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => match std::env::var("HTTP_PORT") {
            Ok(port) => format!("http://127.0.0.1:{port}/health/ready"),
            Err(_) => {
                eprintln!("healthcheck: no URL given and HTTP_PORT is not set");
                return ExitCode::FAILURE;
            }
        },
    };
    match probe(&url, TIMEOUT) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("healthcheck: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `GET url` (HTTP/1.0) and returns the status code if it is 2xx, all within `timeout`.
fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let address = authority
        .to_socket_addrs()
        .map_err(|error| format!("resolving {authority}: {error}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream =
        TcpStream::connect_timeout(&address, remaining()).map_err(|error| error.to_string())?;
    stream
        .set_write_timeout(Some(remaining()))
        .map_err(|error| error.to_string())?;
    // One write: `write!` on the stream would send each piece in a segment of its own.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: healthcheck\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("sending the request: {error}"))?;
    // The status line is all we need: `HTTP/1.x NNN reason`.
    let mut head = Vec::new();
    let mut buffer = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream
            .set_read_timeout(Some(remaining()))
            .map_err(|error| error.to_string())?;
        match stream
            .read(&mut buffer)
            .map_err(|error| format!("reading the response: {error}"))?
        {
            0 => break,
            read => head.extend_from_slice(&buffer[..read]),
        }
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {status_line:?}"))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("answered {status_line}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with `response` and returns the request line it received.
    fn serve_once(response: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health/ready", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request head, however it was split into segments.
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|end| end == b"\r\n\r\n") {
                match stream.read(&mut buffer).unwrap() {
                    0 => break,
                    read => request.extend_from_slice(&buffer[..read]),
                }
            }
            stream.write_all(response.as_bytes()).unwrap();
            String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        });
        (url, server)
    }

    #[test]
    fn a_2xx_answer_is_healthy() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(probe(&url, TIMEOUT), Ok(200));
        assert_eq!(server.join().unwrap(), "GET /health/ready HTTP/1.0");
    }

    #[test]
    fn a_503_answer_is_unhealthy() {
        let (url, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n{}");
        let error = probe(&url, TIMEOUT).unwrap_err();
        assert!(error.contains("503"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn a_closed_port_or_a_silent_server_is_unhealthy() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts (the kernel does) but never answers: the timeout must end the probe.
        let started = Instant::now();
        assert!(probe(&format!("http://{address}/"), Duration::from_millis(300)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
        assert!(probe(&format!("http://{address}/"), TIMEOUT).is_err());
        assert!(probe("https://127.0.0.1/", TIMEOUT).is_err());
    }
}
