//! Server reflection in both protocol versions clients speak: v1 (grpcurl
//! 1.8.8 and later) and v1alpha (older grpcurl, Postman, Evans), each asked
//! by its own client to list the services and describe one; and the health
//! service answering for the server and each Drover service.

mod common;

use common::Cluster;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tonic_reflection::pb::{v1, v1alpha};

const DROVER_SERVICES: [&str; 3] = [
    "drover.v1.Agents",
    "drover.v1.Queues",
    "drover.v1.Scheduler",
];

async fn channel(cluster: &Cluster) -> Channel {
    Channel::from_shared(cluster.server.clone())
        .expect("the harness's address is a URI")
        .connect()
        .await
        .expect("the scheduler listens")
}

/// `$name(channel)`: through reflection protocol `$version`, the services
/// listed and how many file descriptors describe `drover.v1.Scheduler`. The
/// two versions' messages are alike but distinct types.
macro_rules! ask {
    ($name:ident, $version:ident) => {
        async fn $name(channel: Channel) -> (Vec<String>, usize) {
            use $version::server_reflection_request::MessageRequest;
            use $version::server_reflection_response::MessageResponse;
            let mut client =
                $version::server_reflection_client::ServerReflectionClient::new(channel);
            let requests = [
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol("drover.v1.Scheduler".into()),
            ]
            .map(|m| $version::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            });
            let mut answers = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .expect("reflection is served")
                .into_inner();
            let mut services = Vec::new();
            let mut files = 0;
            while let Some(answer) = answers.message().await.expect("an answer") {
                match answer.message_response {
                    Some(MessageResponse::ListServicesResponse(list)) => {
                        services.extend(list.service.into_iter().map(|s| s.name))
                    }
                    Some(MessageResponse::FileDescriptorResponse(fds)) => {
                        files = fds.file_descriptor_proto.len()
                    }
                    other => panic!("unexpected answer: {other:?}"),
                }
            }
            (services, files)
        }
    };
}

ask!(ask_v1, v1);
ask!(ask_v1alpha, v1alpha);

#[tokio::test]
async fn both_reflection_versions_list_and_describe_the_services_and_health_answers() {
    let cluster = Cluster::without_agents().await;
    for (version, (services, files)) in [
        ("v1", ask_v1(channel(&cluster).await).await),
        ("v1alpha", ask_v1alpha(channel(&cluster).await).await),
    ] {
        let own = format!("grpc.reflection.{version}.ServerReflection");
        for service in DROVER_SERVICES.iter().chain(&[own.as_str()]) {
            assert!(
                services.iter().any(|s| s == service),
                "{version}: {service} not in {services:?}"
            );
        }
        assert!(files > 0, "{version}: drover.v1.Scheduler not described");
    }
    let mut health = HealthClient::new(channel(&cluster).await);
    // "": the server as a whole.
    for service in DROVER_SERVICES.iter().chain(&[""]) {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service}");
    }
}
