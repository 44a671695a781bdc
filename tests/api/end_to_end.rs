//! The pieces together: an authenticated removal, its outbox event, the live
//! stream that delivers it, the caller's scope and stream bound.

use std::time::Duration;

use connections::proto::v1::{self as pb, subscribe_response::Message};
use tonic::{Code, Streaming};

use crate::{
    helpers::{Backend, TestApp, assert_refused, bearer},
    on_both_backends,
    trace_context::{TRACE_ID, traceparent_parts},
};

on_both_backends!(
    a_removal_reaches_a_live_subscriber_with_actor_call_id_and_traceparent,
    a_site_scoped_subscriber_only_receives_its_sites_events,
    the_stream_bound_refuses_one_stream_too_many_and_frees_its_slot,
);

const PATIENCE: Duration = Duration::from_secs(20);
const EVERYTHING: &str = "connections.write,connections.read,events.subscribe,admin";

async fn spawn(backend: &Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| {
        s.security.token_cache_ttl = Duration::ZERO;
        s.security.max_streams_per_caller = 1;
    })
    .await
}

/// A site with an account that logs in with a password and facebook.
async fn seed(app: &TestApp, api_key: &str, vhost: i64) {
    app.create_site(api_key, vhost).await;
    app.create_account(api_key, "u1", &[("a@x.com", true)])
        .await;
    app.link(
        api_key,
        "u1",
        "facebook",
        "",
        &format!("fb-{api_key}"),
        None,
    )
    .await;
}

fn remove_facebook(api_key: &str) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        api_key: api_key.into(),
        uid: "u1".into(),
        provider: Some("facebook".into()),
        ..Default::default()
    }
}

async fn subscribe_now(app: &TestApp, token: &str) -> Streaming<pb::SubscribeResponse> {
    let mut stream = app
        .events()
        .subscribe(bearer(
            pb::SubscribeRequest {
                start_from: pb::StartFrom::Now.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("subscribe")
        .into_inner();
    // Live from here on: later removals must arrive.
    assert!(matches!(next(&mut stream).await, Message::CaughtUp(_)));
    stream
}

async fn next(stream: &mut Streaming<pb::SubscribeResponse>) -> Message {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("no message in time")
            .expect("stream failed")
            .expect("stream ended")
            .message
            .expect("empty message");
        if !matches!(message, Message::Heartbeat(_)) {
            return message;
        }
    }
}

async fn next_event(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::ConnectionRemoved {
    match next(stream).await {
        Message::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn a_removal_reaches_a_live_subscriber_with_actor_call_id_and_traceparent(backend: Backend) {
    let app = spawn(&backend).await;
    seed(&app, "3_a", 1).await;
    let token = app.create_token("session-killer", "*", EVERYTHING).await;
    let mut stream = subscribe_now(&app, &token).await;

    let mut request = bearer(remove_facebook("3_a"), &token);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .expect("header"),
    );
    let response = app
        .connections()
        .remove_connection(request)
        .await
        .expect("remove");
    let traceparent = response
        .metadata()
        .get("traceparent")
        .expect("traceparent header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let response = response.into_inner();

    let event = next_event(&mut stream).await;
    assert_eq!(event.position, 1);
    assert_eq!(event.event_id, response.removed[0].event_id);
    assert_eq!(event.call_id, response.call_id);
    assert_eq!(event.actor, "session-killer");
    assert_eq!(event.traceparent, traceparent);
    assert_eq!(traceparent_parts(&event.traceparent).1, TRACE_ID);
    assert_eq!(
        (
            event.api_key.as_str(),
            event.uid.as_str(),
            event.provider.as_str()
        ),
        ("3_a", "u1", "facebook")
    );
    assert_eq!(event.mode(), pb::RemovalMode::Hard);
    assert!(event.provider_logout_requested);
    assert_eq!(event.remaining_login_methods, 1);
    // The provider session token given to LinkConnection never travels on.
    assert!(!format!("{event:?}").contains("secret-token"));
}

async fn a_site_scoped_subscriber_only_receives_its_sites_events(backend: Backend) {
    let app = spawn(&backend).await;
    seed(&app, "3_a", 1).await;
    seed(&app, "3_b", 2).await;
    let admin = app.create_token("operator", "*", EVERYTHING).await;
    let scoped = app
        .create_token("tenant-b", "3_b", "events.subscribe")
        .await;
    let mut stream = subscribe_now(&app, &scoped).await;

    for api_key in ["3_a", "3_b"] {
        app.connections()
            .remove_connection(bearer(remove_facebook(api_key), &admin))
            .await
            .expect("remove");
    }
    let event = next_event(&mut stream).await;
    assert_eq!(event.api_key, "3_b", "3_a's event must not be delivered");
    // Position 1 (3_a) was skipped for this caller, not lost for others.
    assert_eq!(event.position, 2);

    // Asking for another site outright is refused (a second caller of the
    // same scope, since this one's single stream slot is taken).
    let probe = app
        .create_token("tenant-b-probe", "3_b", "events.subscribe")
        .await;
    let refused = app
        .events()
        .subscribe(bearer(
            pb::SubscribeRequest {
                api_keys: vec!["3_a".into()],
                ..Default::default()
            },
            &probe,
        ))
        .await;
    assert_refused(refused, Code::PermissionDenied, "PERMISSION_DENIED");
}

async fn the_stream_bound_refuses_one_stream_too_many_and_frees_its_slot(backend: Backend) {
    let app = spawn(&backend).await;
    let token = app.create_token("reader", "*", "events.subscribe").await;
    let first = subscribe_now(&app, &token).await;

    let second = app
        .events()
        .subscribe(bearer(pb::SubscribeRequest::default(), &token))
        .await;
    assert_refused(second, Code::ResourceExhausted, "RESOURCE_EXHAUSTED");

    drop(first);
    // The slot is released when the server notices the stream is gone.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let again = app
            .events()
            .subscribe(bearer(pb::SubscribeRequest::default(), &token))
            .await;
        match again {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
}
