//! A server of the test's own on 127.0.0.1 that answers each connection
//! with a raw HTTP response given in advance: for what docker-registry
//! never sends (429, a manifest over 4 MiB).

use std::io::Write;

/// Answers the connections to a port of 127.0.0.1, the n-th with
/// `responses[n]` (raw HTTP), then stops; gives `127.0.0.1:PORT`.
pub fn serve_raw(responses: Vec<Vec<u8>>) -> String {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (stream, response) in listener.incoming().zip(responses) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = stream.write_all(&response);
        }
    });
    addr
}

/// A 200 response carrying `body` as an OCI manifest, with a
/// Content-Length or (when `chunked`) without one.
pub fn manifest_response(body: &[u8], chunked: bool) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\
        Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        .to_vec();
    if chunked {
        r.extend(format!("Transfer-Encoding: chunked\r\n\r\n{:x}\r\n", body.len()).bytes());
        r.extend(body);
        r.extend(b"\r\n0\r\n\r\n");
    } else {
        r.extend(format!("Content-Length: {}\r\n\r\n", body.len()).bytes());
        r.extend(body);
    }
    r
}
