//! `brokerstats`: the live counters the console's status bar polls, from the broker's
//! [`Stats`] (the same values `$SYS/broker/...` publishes). Backend (app token) only:
//! broker-wide numbers are not a group member's business.

use crate::api::ops::{ApiError, Caller, Context};
use crate::stats::Stats;
use serde_json::{json, Value};

pub fn broker_stats(ctx: &Context<'_>, caller: &Caller) -> Result<Value, ApiError> {
    if *caller != Caller::Backend {
        return Err(ApiError::new(
            "PERMISSION",
            "brokerstats is for the backend (app token) only",
        ));
    }
    let stats = ctx.router.stats();
    let g = Stats::get;
    Ok(json!({"stats": {
        "connections": g(&stats.connections_current),
        "messages_received": g(&stats.messages_received),
        "messages_sent": g(&stats.messages_sent),
        "subscriptions": g(&stats.subscriptions),
        "uptime_secs": stats.started.elapsed().as_secs(),
    }}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::groups::directory::Directory;
    use crate::router::retained::Retained;
    use crate::router::Router;
    use std::sync::Arc;

    #[test]
    fn counts_come_from_the_broker_stats_and_users_are_refused() {
        let stats = Arc::new(Stats::default());
        let router = Router::new(
            Retained::new(None, stats.clone()),
            None,
            None,
            Arc::new(Directory::new(None, &[]).unwrap()),
            Arc::new(crate::groups::history::History::new(
                Default::default(),
                None,
            )),
            stats.clone(),
        );
        let config = Config::default();
        let ctx = Context {
            config: &config,
            router: &router,
            durable: None,
        };
        Stats::add(&stats.connections_current, 2);
        Stats::add(&stats.messages_received, 5);
        let answer = broker_stats(&ctx, &Caller::Backend).unwrap();
        assert_eq!(answer["stats"]["connections"], 2);
        assert_eq!(answer["stats"]["messages_received"], 5);
        assert_eq!(answer["stats"]["messages_sent"], 0);
        let refused = broker_stats(&ctx, &Caller::User("alice".into())).unwrap_err();
        assert_eq!(refused.code, "PERMISSION");
    }
}
