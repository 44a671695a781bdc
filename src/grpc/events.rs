//! EventService: streaming the outbox.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::AppState;
use crate::proto::v1::{self as pb, event_service_server::EventService};

#[derive(Debug, Clone)]
pub struct EventApi {
    #[allow(dead_code)]
    state: AppState,
}

impl EventApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        _request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("Subscribe is not implemented yet"))
    }

    async fn commit_position(
        &self,
        _request: Request<pb::CommitPositionRequest>,
    ) -> Result<Response<pb::CommitPositionResponse>, Status> {
        Err(Status::unimplemented(
            "CommitPosition is not implemented yet",
        ))
    }
}
