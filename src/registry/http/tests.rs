//! Tests of the HTTP transport.

use super::*;

#[test]
fn backoff_doubles_up_to_the_cap() {
    let p = RetryPolicy::DEFAULT;
    let ms = |n| p.delay(n, None).as_millis();
    assert_eq!([ms(1), ms(2), ms(3), ms(4)], [250, 500, 1000, 2000]);
    assert_eq!(ms(5), 4000);
    assert_eq!(ms(40), 4000, "no overflow for many failures");
}

#[test]
fn retry_after_is_honoured_within_its_cap() {
    let p = RetryPolicy::DEFAULT;
    let secs = |n, after| p.delay(n, Some(Duration::from_secs(after))).as_secs_f64();
    assert_eq!(secs(1, 3), 3.0);
    assert_eq!(secs(1, 3600), 10.0, "capped");
    assert_eq!(secs(3, 0), 1.0, "never shorter than the backoff");
}

#[test]
fn retrying_stops_after_the_tries_or_at_a_fatal_error() {
    let options = ClientOptions::default();
    let reference = Reference::parse("127.0.0.1:1/app").unwrap();
    let mut transport = Transport::new(&reference, &options).unwrap();
    transport.policy.first = Duration::from_millis(1);
    let mut calls = 0;
    let r: Result<()> = transport.retrying("x", || {
        calls += 1;
        Err(Failure::transient("reset"))
    });
    assert_eq!(calls, 4);
    assert_eq!(r.unwrap_err().to_string(), "x: reset (after 4 tries)");
    calls = 0;
    let r: Result<()> = transport.retrying("x", || {
        calls += 1;
        Err(Failure::Fatal(Error::Registry("no".into())))
    });
    assert_eq!((calls, r.unwrap_err().to_string()), (1, "no".to_string()));
}

#[test]
fn tries_that_make_progress_start_the_count_afresh() {
    let options = ClientOptions::default();
    let reference = Reference::parse("127.0.0.1:1/app").unwrap();
    let mut transport = Transport::new(&reference, &options).unwrap();
    transport.policy.first = Duration::from_millis(1);
    // Ten breaks, each after some bytes: more than the four tries.
    let mut calls = 0;
    let r = transport.retrying_with(
        "x",
        &mut 0u64,
        |done| *done,
        |done| {
            calls += 1;
            *done += 100;
            if *done < 1000 {
                Err(Failure::transient("reset"))
            } else {
                Ok(*done)
            }
        },
    );
    assert_eq!((r.unwrap(), calls), (1000, 10));
    // Progress on the first try only: it and three more, then the error.
    calls = 0;
    let r: Result<()> = transport.retrying_with(
        "x",
        &mut 0u64,
        |done| *done,
        |done| {
            calls += 1;
            if *done == 0 {
                *done = 5;
            }
            Err(Failure::transient("reset"))
        },
    );
    assert_eq!(calls, 4);
    assert_eq!(r.unwrap_err().to_string(), "x: reset (after 4 tries)");
}

#[test]
fn plain_http_only_for_named_or_loopback_registries() {
    let insecure = ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    };
    let allowed = |text: &str, options: &ClientOptions| {
        allow_plain_http(&Reference::parse(text).unwrap(), options)
    };
    assert!(!allowed("registry.example:5000/app", &ClientOptions::default()).unwrap());
    assert!(allowed("registry.example:5000/app", &insecure).unwrap());
    assert!(allowed("localhost:5000/app", &insecure).unwrap());
    assert!(allowed("127.0.0.1:5000/app", &insecure).unwrap());
    let err = allowed("debian:13", &insecure).unwrap_err().to_string();
    assert!(err.contains("docker.io/library/debian") && err.contains("plain http"));
    let t = Transport::new(&Reference::parse("127.0.0.1:5000/a").unwrap(), &insecure);
    assert_eq!(t.unwrap().base(), "http://127.0.0.1:5000");
    let t = Transport::new(
        &Reference::parse("127.0.0.1:5000/a").unwrap(),
        &Default::default(),
    );
    assert_eq!(t.unwrap().base(), "https://127.0.0.1:5000");
}

#[test]
fn the_agent_times_out_and_keeps_credentials_from_redirects() {
    let reference = Reference::parse("127.0.0.1:5000/a").unwrap();
    let t = Transport::new(&reference, &ClientOptions::default()).unwrap();
    let c = t.agent.config();
    assert_eq!(
        c.timeout_per_read(),
        Some(IO_TIMEOUT),
        "a stalled body fails"
    );
    assert_eq!(c.timeouts().connect, Some(CONNECT_TIMEOUT));
    assert_eq!(c.timeouts().resolve, Some(CONNECT_TIMEOUT));
    assert_eq!(c.redirect_auth_headers(), RedirectAuthHeaders::Never);
    assert!(c.https_only(), "no redirect down to http");
    assert!(!c.http_status_as_error());
}

#[test]
fn failures_are_sorted_into_retried_and_not() {
    let url = "https://reg.example:5000/v2/app/manifests/1";
    let fatal = |e| match classify(e, url) {
        Failure::Fatal(e) => e.to_string(),
        Failure::Transient { message, .. } => panic!("transient: {message}"),
    };
    assert_eq!(
        fatal(ureq::Error::HostNotFound),
        "unknown host reg.example:5000"
    );
    assert!(fatal(ureq::Error::TooManyRedirects).contains("redirect"));
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert!(matches!(
        classify(ureq::Error::Io(refused), url),
        Failure::Transient { .. }
    ));
    assert!(matches!(
        classify(ureq::Error::ConnectionFailed, url),
        Failure::Transient { .. }
    ));
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate\n").unwrap();
    let options = ClientOptions {
        ca_certs: vec![path.clone()],
        ..ClientOptions::default()
    };
    let reference = Reference::parse("127.0.0.1:5000/a").unwrap();
    let err = Transport::new(&reference, &options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
}

#[test]
fn a_deadline_ends_a_trickling_response() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        let _ = conn.write_all(head);
        // A byte a tenth of a second: never stalls, never ends soon.
        for _ in 0..60 {
            if conn.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let options = ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    };
    let reference = Reference::parse(&format!("{addr}/a")).unwrap();
    let mut t = Transport::new(&reference, &options).unwrap();
    t.deadline = Some(Instant::now() + Duration::from_millis(500));
    let started = Instant::now();
    let url = format!("http://{addr}/v2/");
    let read = t
        .request(Method::Get, &url, &[], None, None)
        .map_err(|_| ())
        .and_then(|mut r| {
            let mut body = Vec::new();
            r.body_mut()
                .as_reader()
                .read_to_end(&mut body)
                .map_err(|_| ())
        });
    assert!(read.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Past it, a request fails at once, without a retry.
    let past = t.request(Method::Get, &url, &[], None, None);
    assert!(matches!(past, Err(Failure::Fatal(_))));
}
