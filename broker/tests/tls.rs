//! MQTT over TLS (`[mqtt] tls_listen`): a CA and certificates made with rcgen, the real
//! broker on 127.0.0.1:0 with its TCP and TLS listeners, and rumqttc (rustls) clients.
//! Refused certificates close only their own connection; the TCP listener and other TLS
//! clients keep working.

mod common;
#[path = "support/pki.rs"]
mod pki;

use common::v4::{self, QoS};
use common::{unique_id, within, TestBroker, QUIET, WAIT};
use pki::{Issued, Pki};
use rookery::config::ClientAuth;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker with a TLS listener whose certificate `pki` issued; `client_ca` turns on
/// client certificates.
async fn tls_broker(pki: &Pki, client_ca: Option<(&Pki, ClientAuth)>) -> TestBroker {
    let server = pki.server();
    TestBroker::start_with(|config| {
        config.mqtt.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        config.mqtt.tls_cert = Some(server.cert_path.clone());
        config.mqtt.tls_key = Some(server.key_path.clone());
        if let Some((ca, auth)) = client_ca {
            config.mqtt.tls_client_ca = Some(ca.ca_path());
            config.mqtt.tls_client_auth = auth;
        }
    })
    .await
}

fn tls_addr(broker: &TestBroker) -> SocketAddr {
    broker.handle().mqtt_tls_addr().expect("TLS listener")
}

/// A rumqttc 3.1.1 client over TLS, trusting `trust`'s CA and presenting `client`.
async fn connect_tls(
    addr: SocketAddr,
    trust: &Pki,
    client: Option<&Issued>,
) -> Result<v4::Client, v4::ConnectionError> {
    let config = rumqttc::TlsConfiguration::Simple {
        ca: trust.ca_pem().into_bytes(),
        alpn: None,
        client_auth: client.map(|c| {
            (
                c.cert_pem.clone().into_bytes(),
                c.key_pem.clone().into_bytes(),
            )
        }),
    };
    v4::connect_with(addr, &unique_id("tls"), |options| {
        options.set_transport(rumqttc::Transport::tls_with_config(config));
    })
    .await
}

#[tokio::test]
async fn messages_cross_between_tls_and_tcp_clients() {
    let pki = Pki::new("main");
    let broker = tls_broker(&pki, None).await;
    let mut over_tls = connect_tls(tls_addr(&broker), &pki, None)
        .await
        .expect("TLS client connects");
    let mut over_tcp = v4::connect(broker.addr, &unique_id("tcp")).await;
    over_tls.subscribe("cross/to-tls", QoS::AtLeastOnce).await;
    over_tcp.subscribe("cross/to-tcp", QoS::AtLeastOnce).await;

    over_tcp
        .publish("cross/to-tls", QoS::AtLeastOnce, false, b"from tcp")
        .await;
    let received = over_tls.recv_publish().await;
    assert_eq!(&received.payload[..], b"from tcp");

    over_tls
        .publish("cross/to-tcp", QoS::AtLeastOnce, false, b"from tls")
        .await;
    let received = over_tcp.recv_publish().await;
    assert_eq!(&received.payload[..], b"from tls");
    broker.stop().await;
}

/// Many messages, some large, in quick succession: the TLS layer holds written records
/// until they are flushed, and every one of them must still arrive, in order.
#[tokio::test]
async fn a_burst_of_messages_reaches_a_tls_subscriber_whole() {
    let pki = Pki::new("burst");
    let broker = tls_broker(&pki, None).await;
    let mut subscriber = connect_tls(tls_addr(&broker), &pki, None)
        .await
        .expect("TLS client connects");
    subscriber.subscribe("burst/#", QoS::AtMostOnce).await;
    let mut publisher = v4::connect(broker.addr, &unique_id("tcp")).await;
    let big = vec![7u8; 200 * 1024];
    for i in 0..500u32 {
        let payload = if i % 100 == 99 {
            big.clone()
        } else {
            i.to_be_bytes().to_vec()
        };
        publisher
            .publish("burst/x", QoS::AtMostOnce, false, &payload)
            .await;
    }
    for i in 0..500u32 {
        let message = subscriber.recv_publish().await;
        if i % 100 == 99 {
            assert_eq!(message.payload.len(), big.len(), "message {i}");
        } else {
            assert_eq!(&message.payload[..], &i.to_be_bytes(), "message {i}");
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_fails_the_handshake() {
    let pki = Pki::new("server");
    let stranger = Pki::new("stranger");
    let broker = tls_broker(&pki, None).await;
    let result = connect_tls(tls_addr(&broker), &stranger, None).await;
    let error = result.err().expect("the handshake fails");
    assert!(
        error.to_string().to_lowercase().contains("certificate")
            || format!("{error:?}").contains("UnknownIssuer"),
        "unexpected error: {error:?}"
    );
    // Only that connection: TLS and TCP clients still connect.
    let _good = connect_tls(tls_addr(&broker), &pki, None)
        .await
        .expect("a client trusting the right CA connects");
    let _tcp = v4::connect(broker.addr, &unique_id("tcp")).await;
    broker.stop().await;
}

#[tokio::test]
async fn required_client_certificates_refuse_other_cas_and_none() {
    let pki = Pki::new("required");
    let stranger = Pki::new("stranger");
    let broker = tls_broker(&pki, Some((&pki, ClientAuth::Required))).await;
    let addr = tls_addr(&broker);

    let device = pki.client("device-1");
    let mut good = connect_tls(addr, &pki, Some(&device))
        .await
        .expect("a client with a certificate from the CA connects");
    good.subscribe("devices/#", QoS::AtLeastOnce).await;

    let impostor = stranger.client("device-1");
    assert!(
        connect_tls(addr, &pki, Some(&impostor)).await.is_err(),
        "a certificate from another CA is refused"
    );
    assert!(
        connect_tls(addr, &pki, None).await.is_err(),
        "no certificate is refused when one is required"
    );

    // The accepted client and the TCP listener were not disturbed.
    let mut tcp = v4::connect(broker.addr, &unique_id("tcp")).await;
    tcp.publish("devices/1", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&good.recv_publish().await.payload[..], b"still here");
    broker.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_accept_none_but_refuse_other_cas() {
    let pki = Pki::new("optional");
    let stranger = Pki::new("stranger");
    let broker = tls_broker(&pki, Some((&pki, ClientAuth::Optional))).await;
    let addr = tls_addr(&broker);
    connect_tls(addr, &pki, None)
        .await
        .expect("no certificate is fine when optional");
    connect_tls(addr, &pki, Some(&pki.client("device-2")))
        .await
        .expect("a certificate from the CA is fine");
    assert!(
        connect_tls(addr, &pki, Some(&stranger.client("device-2")))
            .await
            .is_err(),
        "a certificate that is presented is still verified"
    );
    broker.stop().await;
}

/// Bytes that are not TLS, and a client that never starts its handshake, close only
/// their own connection and hold up nobody else's handshake.
#[tokio::test]
async fn bad_and_stalled_handshakes_affect_only_their_own_connection() {
    let pki = Pki::new("garbage");
    let broker = tls_broker(&pki, None).await;
    let addr = tls_addr(&broker);
    let _stalled = TcpStream::connect(addr).await.expect("TCP connect");

    let mut garbage = TcpStream::connect(addr).await.expect("TCP connect");
    // A plain MQTT CONNECT on the TLS port.
    garbage
        .write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0])
        .await
        .expect("write");
    let mut sink = Vec::new();
    let read = within("the broker to close a non-TLS connection", async {
        garbage.read_to_end(&mut sink).await
    })
    .await;
    assert!(
        read.is_err() || sink.iter().all(|&b| b != 0x20),
        "no CONNACK on the TLS port for plain MQTT"
    );

    let mut tls = connect_tls(addr, &pki, None)
        .await
        .expect("TLS still accepts while one handshake stalls");
    tls.subscribe("still/#", QoS::AtMostOnce).await;
    let mut tcp = v4::connect(broker.addr, &unique_id("tcp")).await;
    tcp.publish("still/ok", QoS::AtMostOnce, false, b"ok").await;
    assert_eq!(&tls.recv_publish().await.payload[..], b"ok");
    assert!(tls.still_open_after(QUIET).await);
    broker.stop().await;
}

#[tokio::test]
async fn a_tls_client_taken_over_by_a_tcp_client_hands_its_session_on() {
    let pki = Pki::new("takeover");
    let broker = tls_broker(&pki, None).await;
    let id = unique_id("roaming");
    let config = rumqttc::TlsConfiguration::Simple {
        ca: pki.ca_pem().into_bytes(),
        alpn: None,
        client_auth: None,
    };
    let mut first = v4::connect_with(tls_addr(&broker), &id, |options| {
        options.set_clean_session(false);
        options.set_transport(rumqttc::Transport::tls_with_config(config));
    })
    .await
    .expect("TLS client connects");
    first.subscribe("roam/#", QoS::AtLeastOnce).await;
    let mut second = v4::connect_with(broker.addr, &id, |options| {
        options.set_clean_session(false);
    })
    .await
    .expect("the same client id connects over TCP");
    assert!(second.connack.session_present, "the session moved over");
    first.wait_closed().await;
    let mut publisher = v4::connect(broker.addr, &unique_id("pub")).await;
    publisher
        .publish("roam/1", QoS::AtLeastOnce, false, b"follows")
        .await;
    assert_eq!(&second.recv_publish().await.payload[..], b"follows");
    broker.stop().await;
}

async fn start_error(configure: impl FnOnce(&mut rookery::Config)) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut config = rookery::Config::default();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = data.path().to_path_buf();
    config.sys.interval_secs = 0;
    configure(&mut config);
    match tokio::time::timeout(WAIT, rookery::start(config)).await {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(handle)) => {
            handle.shutdown(Duration::from_secs(1)).await;
            panic!("the broker started")
        }
        Err(_) => panic!("start hung"),
    }
}

#[tokio::test]
async fn missing_or_invalid_tls_files_are_clear_startup_errors() {
    let pki = Pki::new("errors");
    let server = pki.server();
    let tls_listen = Some("127.0.0.1:0".parse().unwrap());

    let error = start_error(|c| c.mqtt.tls_listen = tls_listen).await;
    assert!(
        error.contains("[mqtt] tls_listen is set but tls_cert is not"),
        "{error}"
    );

    let missing = pki.path("no-such-cert.pem");
    let error = start_error(|c| {
        c.mqtt.tls_listen = tls_listen;
        c.mqtt.tls_cert = Some(missing.clone());
        c.mqtt.tls_key = Some(server.key_path.clone());
    })
    .await;
    assert!(
        error.contains("tls_cert") && error.contains("no-such-cert.pem"),
        "{error}"
    );

    let not_pem = pki.path("not-a-key.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let error = start_error(|c| {
        c.mqtt.tls_listen = tls_listen;
        c.mqtt.tls_cert = Some(server.cert_path.clone());
        c.mqtt.tls_key = Some(not_pem.clone());
    })
    .await;
    assert!(
        error.contains("tls_key") && error.contains("not-a-key.pem"),
        "{error}"
    );

    // A key that is not the certificate's.
    let other = pki.client("other");
    let error = start_error(|c| {
        c.mqtt.tls_listen = tls_listen;
        c.mqtt.tls_cert = Some(server.cert_path.clone());
        c.mqtt.tls_key = Some(other.key_path.clone());
    })
    .await;
    assert!(error.contains("do not make a usable pair"), "{error}");

    let error = start_error(|c| {
        c.mqtt.tls_listen = tls_listen;
        c.mqtt.tls_cert = Some(server.cert_path.clone());
        c.mqtt.tls_key = Some(server.key_path.clone());
        c.mqtt.tls_client_ca = Some(not_pem.clone());
    })
    .await;
    assert!(error.contains("tls_client_ca"), "{error}");
}

/// A TLS subscriber with a small receive window that stops reading while a burst is
/// published to it: the broker's writes back up into the TLS layer and wait, and once
/// the subscriber reads again every message arrives, in order, down to the last.
#[tokio::test]
async fn a_tls_subscriber_that_reads_late_still_gets_the_last_message() {
    use common::{connect_packet, encode, subscribe_packet};
    use rookery::codec::{self, Packet, ProtocolVersion};
    let version = ProtocolVersion::V311;
    let pki = Pki::new("late");
    let broker = tls_broker(&pki, None).await;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None));
    // A small receive window, so that the broker's socket is full long before the
    // burst ends.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(tls_addr(&broker)).await.expect("TCP");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("handshake");
    let connect = Packet::Connect(Box::new(connect_packet(version, &unique_id("late"))));
    tls.write_all(&encode(&connect, version)).await.unwrap();
    tls.write_all(&encode(
        &subscribe_packet(1, "late/#", codec::QoS::AtMostOnce),
        version,
    ))
    .await
    .unwrap();
    let mut rbuf = bytes::BytesMut::new();
    let mut next_packet = async |tls: &mut tokio_rustls::client::TlsStream<TcpStream>| loop {
        if let Some(packet) = codec::decode_packet(&mut rbuf, version, 1 << 20).expect("decodes") {
            return packet;
        }
        rbuf.reserve(64 * 1024);
        assert!(tls.read_buf(&mut rbuf).await.expect("read") > 0, "closed");
    };
    assert!(matches!(
        within("CONNACK", next_packet(&mut tls)).await,
        Packet::ConnAck(_)
    ));
    assert!(matches!(
        within("SUBACK", next_packet(&mut tls)).await,
        Packet::SubAck(_)
    ));

    let mut publisher = v4::connect(broker.addr, &unique_id("pub")).await;
    let payload = vec![1u8; 10 * 1024];
    const COUNT: u32 = 100;
    for i in 0..COUNT {
        let mut message = payload.clone();
        message[..4].copy_from_slice(&i.to_be_bytes());
        publisher
            .publish("late/x", QoS::AtMostOnce, false, &message)
            .await;
    }
    // Nothing is read meanwhile: the broker's writes back up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..COUNT {
        match within("a PUBLISH", next_packet(&mut tls)).await {
            Packet::Publish(publish) => assert_eq!(&publish.payload[..4], &i.to_be_bytes()),
            other => panic!("expected PUBLISH {i}, got {other:?}"),
        }
    }
    broker.stop().await;
}
