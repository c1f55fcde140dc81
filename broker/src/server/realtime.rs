//! The real-time management API (SPEC §8): an authenticated client publishes a request
//! (the backend API's JSON, without an app token) to `$groups/ops`; the reply goes to its
//! MQTT 5 Response Topic with the Correlation Data, or to `$users/{address}/replies`.

use super::connection::Connection;
use crate::codec::{reason, MqttStr, Packet, Properties, PubResponse, Publish, QoS};
use crate::groups::enforce;
use bytes::Bytes;
use std::sync::Arc;

impl Connection {
    pub(super) fn on_ops_request(&mut self, publish: Publish) {
        // `check_publish` lets only authenticated clients get here.
        let address: Arc<str> = self.username.clone().unwrap_or_else(|| Arc::from(""));
        let reply_topic = self.reply_topic(&publish, &address);
        let correlation = publish.properties.correlation_data.clone();
        let request = serde_json::from_slice::<serde_json::Value>(&publish.payload);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let reply = match request {
                Ok(request) => crate::groups::realtime_request(&broker, &address, request).await,
                Err(e) => serde_json::json!({
                    "op": null, "result": false, "error": "BADREQUEST",
                    "message": format!("the request is not JSON: {e}"),
                }),
            };
            let properties = Properties {
                correlation_data: correlation,
                content_type: Some(MqttStr::from("application/json")),
                ..Properties::default()
            };
            let payload = Bytes::from(serde_json::to_vec(&reply).unwrap_or_default());
            broker
                .router
                .publish_internal(&reply_topic, payload, properties);
        });
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResponse::new(
                publish.packet_id,
                reason::SUCCESS,
            ))),
            QoS::ExactlyOnce => {
                self.state.incoming_qos2.insert(publish.packet_id);
                self.send(&Packet::PubRec(PubResponse::new(
                    publish.packet_id,
                    reason::SUCCESS,
                )));
            }
        }
    }

    /// The MQTT 5 Response Topic if this client may publish there, else its own
    /// `$users/{address}/replies` (a reply must not become a way around the ACL).
    fn reply_topic(&self, publish: &Publish, address: &str) -> String {
        let own = format!("$users/{address}/replies");
        let Some(topic) = publish.properties.response_topic.as_deref() else {
            return own;
        };
        if topic == own {
            return own;
        }
        let directory = &self.broker.router.directory;
        let allowed = match enforce::check_publish(directory, Some(address), topic) {
            Ok(Some(crate::groups::GroupTopic::Ops)) | Err(_) => false,
            Ok(Some(_)) => true,
            Ok(None) => self.broker.router.acl().is_none_or(|acl| {
                acl.check_topic(
                    crate::acl::Identity {
                        username: Some(address),
                        client_id: &self.client_id,
                    },
                    topic,
                    crate::acl::Access::Write,
                )
            }),
        };
        if allowed {
            topic.to_string()
        } else {
            own
        }
    }
}
