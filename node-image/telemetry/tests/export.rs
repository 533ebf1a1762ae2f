//! Spans and metrics go over real HTTP to a real OTLP receiver on loopback (127.0.60.1),
//! and arrive decoded with the resource, names and attributes they were given.

use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use trellis_telemetry::collector::Collector;
use trellis_telemetry::{Destinations, Export, Settings, destinations};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_the_collector() {
    let collector = Collector::start("127.0.60.1").await.unwrap();
    let settings = Settings {
        service: "trellis-test",
        version: "9.9.9",
        endpoint: Some(collector.endpoint()),
        https: false,
    };
    let destinations = destinations(settings.endpoint.as_deref(), false).unwrap();
    let export = Export::start(&settings, &destinations).unwrap().unwrap();
    let subscriber = tracing_subscriber::registry().with(export.layer(settings.service));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("reconcile", network = "alpha", outcome = "ok");
        let _entered = span.enter();
        tracing::info!("inside");
        // Below INFO: not exported.
        let _quiet = tracing::debug_span!("detail").entered();
    });
    opentelemetry::global::meter("trellis-test")
        .u64_counter("trellis.test.requests")
        .build()
        .add(3, &[opentelemetry::KeyValue::new("route", "/x")]);
    // Shutdown flushes both signals.
    export.shutdown();

    let span = collector
        .span(Duration::from_secs(30), |s| s.name == "reconcile")
        .await
        .expect("the reconcile span was not received");
    assert_eq!(span.service(), Some("trellis-test"));
    assert_eq!(
        span.resource.get("service.version").map(String::as_str),
        Some("9.9.9")
    );
    assert_eq!(span.attribute("network"), Some("alpha"));
    assert_eq!(span.attribute("outcome"), Some("ok"));
    assert!(collector.spans().iter().all(|s| s.name != "detail"));
    let point = collector
        .point(Duration::from_secs(30), |p| {
            p.metric == "trellis.test.requests"
        })
        .await
        .expect("the counter was not received");
    assert_eq!(point.value, 3.0);
    assert_eq!(
        point.attributes.get("route").map(String::as_str),
        Some("/x")
    );
    assert_eq!(
        point.resource.get("service.name").map(String::as_str),
        Some("trellis-test")
    );
}

#[test]
fn nothing_is_built_without_an_endpoint() {
    let settings = Settings {
        service: "trellis-test",
        version: "0",
        endpoint: None,
        https: false,
    };
    // This test binary's environment sets no OTEL_* variable.
    assert!(std::env::vars().all(|(k, _)| !k.starts_with("OTEL_")));
    let destinations = destinations(None, false).unwrap();
    assert_eq!(destinations, Destinations::default());
    assert!(Export::start(&settings, &destinations).unwrap().is_none());
}
