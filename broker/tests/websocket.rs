//! MQTT over WebSocket on the HTTP listener's `/mqtt`, and over WSS (`[http]
//! tls_listen`): a tokio-tungstenite client sending MQTT packets in binary messages,
//! talking to TCP clients through the same broker.

mod common;
#[path = "support/pki.rs"]
mod pki;

use bytes::BytesMut;
use common::v4::{self, QoS};
use common::{connect_packet, encode, publish_packet, subscribe_packet, unique_id, within};
use common::{TestBroker, QUIET, WAIT};
use futures_util::{SinkExt, StreamExt};
use rookery::codec::{self, Packet, ProtocolVersion};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const V311: ProtocolVersion = ProtocolVersion::V311;

/// A WebSocket MQTT client that writes packets as it is told (whole, split across
/// messages, or several to a message) and decodes what comes back.
struct WsClient<S> {
    socket: WebSocketStream<S>,
    rbuf: BytesMut,
    /// The subprotocol the broker selected.
    protocol: Option<String>,
}

fn request(
    url: &str,
    protocols: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("request");
    if let Some(protocols) = protocols {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).expect("header"),
        );
    }
    request
}

/// Opens `ws://addr/mqtt` offering `protocols` (a `Sec-WebSocket-Protocol` value).
async fn open(addr: SocketAddr, protocols: Option<&str>) -> Result<WsClient<TcpStream>, WsError> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let url = format!("ws://{addr}/mqtt");
    let (socket, response) = within(
        "WebSocket upgrade",
        tokio_tungstenite::client_async(request(&url, protocols), tcp),
    )
    .await?;
    Ok(WsClient::new(socket, &response))
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    fn new(
        socket: WebSocketStream<S>,
        response: &tokio_tungstenite::tungstenite::handshake::client::Response,
    ) -> Self {
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        WsClient {
            socket,
            rbuf: BytesMut::new(),
            protocol,
        }
    }

    /// Sends each of `parts` as one binary message.
    async fn send_messages(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.socket
                .send(Message::Binary(part.to_vec().into()))
                .await
                .expect("send");
        }
    }

    async fn send(&mut self, packet: &Packet) {
        self.send_messages(&[&encode(packet, V311)]).await;
    }

    /// CONNECT and the CONNACK's return code.
    async fn connect(&mut self, client_id: &str) -> u8 {
        self.send(&Packet::Connect(Box::new(connect_packet(V311, client_id))))
            .await;
        match self.recv().await {
            Some(Packet::ConnAck(connack)) => connack.reason_code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.send(&subscribe_packet(1, filter, codec::QoS::AtLeastOnce))
            .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![1]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next packet within [`WAIT`]; `None` if the connection ended first.
    async fn recv(&mut self) -> Option<Packet> {
        within("a packet over WebSocket", async {
            loop {
                match codec::decode_packet(&mut self.rbuf, V311, 16 << 20) {
                    Ok(Some(packet)) => return Some(packet),
                    Ok(None) => {}
                    Err(error) => panic!("undecodable packet from the broker: {error}"),
                }
                match self.socket.next().await {
                    Some(Ok(Message::Binary(data))) => self.rbuf.extend_from_slice(&data),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(other)) => assert!(!other.is_text(), "text from the broker"),
                }
            }
        })
        .await
    }

    async fn recv_publish(&mut self) -> codec::Publish {
        match self.recv().await {
            Some(Packet::Publish(publish)) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads until the broker closes; returns its Close frame's code, if it sent one.
    async fn expect_close(&mut self) -> Option<CloseCode> {
        within("the broker to close the WebSocket", async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return None,
                }
            }
        })
        .await
    }
}

fn publish_bytes(topic: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &publish_packet(topic, codec::QoS::AtMostOnce, 0, payload),
        V311,
    )
}

#[tokio::test]
async fn websocket_and_tcp_clients_exchange_messages_both_ways() {
    let broker = TestBroker::start().await;
    let mut ws = open(broker.http_addr(), Some("mqtt"))
        .await
        .expect("upgrade");
    assert_eq!(ws.protocol.as_deref(), Some("mqtt"), "[MQTT-6.0.0-4]");
    assert_eq!(ws.connect(&unique_id("ws")).await, 0);
    ws.subscribe("cross/to-ws").await;
    let mut tcp = v4::connect(broker.addr, &unique_id("tcp")).await;
    tcp.subscribe("cross/to-tcp", QoS::AtLeastOnce).await;

    tcp.publish("cross/to-ws", QoS::AtLeastOnce, false, b"from tcp")
        .await;
    let publish = ws.recv_publish().await;
    assert_eq!(&publish.payload[..], b"from tcp");
    let packet_id = publish.packet_id;
    ws.send(&Packet::PubAck(codec::PubResponse {
        packet_id,
        reason_code: 0,
        properties: Default::default(),
    }))
    .await;

    ws.send_messages(&[&publish_bytes("cross/to-tcp", b"from ws")])
        .await;
    assert_eq!(&tcp.recv_publish().await.payload[..], b"from ws");
    broker.stop().await;
}

/// [MQTT-6.0.0-2]: the broker must not assume packets are aligned on message
/// boundaries.
#[tokio::test]
async fn packets_split_across_messages_and_several_in_one_message() {
    let broker = TestBroker::start().await;
    let mut ws = open(broker.http_addr(), Some("mqtt"))
        .await
        .expect("upgrade");
    // CONNECT in three messages, one of them a single byte.
    let connect = encode(
        &Packet::Connect(Box::new(connect_packet(V311, &unique_id("split")))),
        V311,
    );
    ws.send_messages(&[&connect[..1], &connect[1..5], &connect[5..]])
        .await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(_))));
    ws.subscribe("split/#").await;

    // Three PUBLISH packets in one message, the third cut off and finished in the next.
    let mut joined = Vec::new();
    for payload in [&b"one"[..], b"two", b"three"] {
        joined.extend(publish_bytes("split/x", payload));
    }
    let cut = joined.len() - 3;
    ws.send_messages(&[&joined[..cut], &joined[cut..]]).await;
    for expected in [&b"one"[..], b"two", b"three"] {
        assert_eq!(&ws.recv_publish().await.payload[..], expected);
    }

    // CONNECT, SUBSCRIBE and PUBLISH in one message: the packets behind CONNECT are
    // handled without waiting for more bytes.
    let mut eager = open(broker.http_addr(), Some("mqtt"))
        .await
        .expect("upgrade");
    let mut all = encode(
        &Packet::Connect(Box::new(connect_packet(V311, &unique_id("eager")))),
        V311,
    );
    all.extend(encode(
        &subscribe_packet(1, "eager/#", codec::QoS::AtMostOnce),
        V311,
    ));
    all.extend(publish_bytes("eager/1", b"to myself"));
    eager.send_messages(&[&all]).await;
    assert!(matches!(eager.recv().await, Some(Packet::ConnAck(_))));
    assert!(matches!(eager.recv().await, Some(Packet::SubAck(_))));
    assert_eq!(&eager.recv_publish().await.payload[..], b"to myself");
    broker.stop().await;
}

/// [MQTT-6.0.0-1]: MQTT goes in binary messages; a text message closes the connection
/// (Close 1003, unsupported data), and the will is published as for a lost connection.
#[tokio::test]
async fn a_text_message_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut watcher = v4::connect(broker.addr, &unique_id("watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut ws = open(broker.http_addr(), Some("mqtt"))
        .await
        .expect("upgrade");
    let mut connect = connect_packet(V311, &unique_id("texter"));
    connect.will = Some(codec::LastWill {
        topic: "wills/texter".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    ws.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(_))));
    ws.socket
        .send(Message::Text("hello".into()))
        .await
        .expect("send");
    assert_eq!(ws.expect_close().await, Some(CloseCode::Unsupported));
    assert_eq!(&watcher.recv_publish().await.payload[..], b"gone");
    broker.stop().await;
}

/// The subprotocol: `mqtt` or `mqttv3.1` are selected (`mqtt` first when both are
/// offered); a client offering only other subprotocols is refused with 400; a client
/// offering none is served without a `Sec-WebSocket-Protocol` answer.
#[tokio::test]
async fn subprotocol_negotiation() {
    let broker = TestBroker::start().await;
    let addr = broker.http_addr();
    let both = open(addr, Some("mqttv3.1, mqtt")).await.expect("upgrade");
    assert_eq!(both.protocol.as_deref(), Some("mqtt"));
    let old = open(addr, Some("mqttv3.1")).await.expect("upgrade");
    assert_eq!(old.protocol.as_deref(), Some("mqttv3.1"));

    match open(addr, Some("chat, superchat")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("a client offering no MQTT subprotocol was upgraded"),
    }

    let mut none = open(addr, None).await.expect("upgrade without subprotocol");
    assert_eq!(none.protocol, None);
    assert_eq!(none.connect(&unique_id("plain")).await, 0);
    broker.stop().await;
}

/// Many messages to a WebSocket subscriber, some larger than one read: every one
/// arrives (the WebSocket layer holds frames until it is flushed).
#[tokio::test]
async fn a_burst_reaches_a_websocket_subscriber_whole() {
    let broker = TestBroker::start().await;
    let mut ws = open(broker.http_addr(), Some("mqtt"))
        .await
        .expect("upgrade");
    ws.connect(&unique_id("burst")).await;
    ws.subscribe("burst/#").await;
    let mut tcp = v4::connect(broker.addr, &unique_id("tcp")).await;
    let big = vec![9u8; 100 * 1024];
    for i in 0..300u32 {
        let payload = if i % 50 == 49 {
            big.clone()
        } else {
            i.to_be_bytes().to_vec()
        };
        tcp.publish("burst/x", QoS::AtMostOnce, false, &payload)
            .await;
    }
    for i in 0..300u32 {
        let publish = ws.recv_publish().await;
        if i % 50 == 49 {
            assert_eq!(publish.payload.len(), big.len());
        } else {
            assert_eq!(&publish.payload[..], &i.to_be_bytes(), "message {i}");
        }
    }
    broker.stop().await;
}

/// A client's DISCONNECT ends the session normally: no will, and the broker closes the
/// WebSocket.
#[tokio::test]
async fn disconnect_closes_the_websocket_without_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = v4::connect(broker.addr, &unique_id("watcher")).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut ws = open(broker.http_addr(), Some("mqtt"))
        .await
        .expect("upgrade");
    let mut connect = connect_packet(V311, &unique_id("polite"));
    connect.will = Some(codec::LastWill {
        topic: "wills/polite".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    ws.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(_))));
    ws.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(ws.expect_close().await, Some(CloseCode::Normal));
    watcher.expect_no_publish(QUIET).await;
    common::eventually("the connection to be counted out", WAIT, || {
        common::counter(&broker.stats().connections_current) == 1
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn wss_serves_mqtt_over_tls() {
    let pki = pki::Pki::new("wss");
    let server = pki.server();
    let broker = TestBroker::start_with(|config| {
        config.http.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        // [http] has no certificate of its own: [mqtt]'s is used.
        config.mqtt.tls_cert = Some(server.cert_path.clone());
        config.mqtt.tls_key = Some(server.key_path.clone());
    })
    .await;
    let addr = broker.handle().http_tls_addr().expect("HTTPS listener");
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None));
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/mqtt", addr.port());
    let (socket, response) = within(
        "WebSocket upgrade",
        tokio_tungstenite::client_async(request(&url, Some("mqtt")), tls),
    )
    .await
    .expect("upgrade");
    let mut wss = WsClient::new(socket, &response);
    assert_eq!(wss.protocol.as_deref(), Some("mqtt"));
    assert_eq!(wss.connect(&unique_id("wss")).await, 0);
    wss.subscribe("secure/#").await;
    let mut publisher = v4::connect(broker.addr, &unique_id("tcp")).await;
    publisher
        .publish("secure/1", QoS::AtMostOnce, false, b"over wss")
        .await;
    assert_eq!(&wss.recv_publish().await.payload[..], b"over wss");

    // A client that does not trust the certificate fails its handshake; the listener
    // goes on.
    let stranger = pki::Pki::new("stranger");
    let connector = tokio_rustls::TlsConnector::from(stranger.client_config(None));
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(within("TLS handshake", connector.connect(name, tcp))
        .await
        .is_err());
    publisher
        .publish("secure/2", QoS::AtMostOnce, false, b"still")
        .await;
    assert_eq!(&wss.recv_publish().await.payload[..], b"still");
    broker.stop().await;
}
