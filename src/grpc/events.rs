//! EventService: Subscribe streams and consumer checkpoints.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{call_context, convert, respond, status::ApiError};
use crate::{
    proto::v1::{self as pb, event_service_server::EventService},
    service::Services,
};

#[derive(Debug, Clone)]
pub struct EventApi {
    services: Services,
}

impl EventApi {
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = call_context(&request);
        let result = async {
            let subscription = convert::subscribe(request.into_inner(), self.services.registry())?;
            let items = self.services.subscribe(&call, subscription).await?;
            let call_id = call.call_id.clone();
            let stream = items.map(move |item| {
                item.map(convert::stream_item)
                    .map_err(|err| ApiError::from(err).into_status(&call_id))
            });
            Ok::<_, ApiError>(Box::pin(stream) as SubscribeStream)
        }
        .await;
        respond(&call, result)
    }

    async fn commit_position(
        &self,
        request: Request<pb::CommitPositionRequest>,
    ) -> Result<Response<pb::CommitPositionResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let (consumer, position) = convert::commit_position(request.into_inner())?;
            let stored = self
                .services
                .commit_position(&call, &consumer, position)
                .await?;
            Ok::<_, ApiError>(pb::CommitPositionResponse {
                consumer: consumer.into_string(),
                position: stored,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }
}
