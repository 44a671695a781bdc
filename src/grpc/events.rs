//! EventService: Subscribe streams (see `events::subscription`) and consumer
//! checkpoints.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    AppState,
    auth::{self, SiteScope},
    call_context,
    convert::{self, SubscribeStart},
    respond,
    status::ApiError,
};
use crate::{
    domain::{EventFilter, StartFrom, event::start_cursor},
    events::subscription,
    proto::v1::{self as pb, event_service_server::EventService},
};

#[derive(Debug, Clone)]
pub struct EventApi {
    state: AppState,
}

impl EventApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn plan(
        &self,
        request: pb::SubscribeRequest,
        scope: &SiteScope,
    ) -> Result<subscription::Plan, ApiError> {
        let params = convert::subscribe(request, &self.state.registry)?;
        let filter = restrict_to_scope(params.filter, scope)?;
        if let Some(keys) = &filter.api_keys {
            super::record_site(keys.iter().cloned().collect::<Vec<_>>().join(","));
        }
        let repo = &self.state.repo;
        let start = match params.start {
            SubscribeStart::Beginning => StartFrom::Beginning,
            SubscribeStart::Now => StartFrom::Now,
            SubscribeStart::AfterPosition(p) => StartFrom::AfterPosition(p),
            SubscribeStart::Consumer(name) => StartFrom::Consumer {
                committed: repo.consumer_position(name.as_str()).await?,
            },
        };
        let state = repo.sequence_state().await?;
        let after = start_cursor(&start, state.last_position, state.pruned_through)?;
        Ok(subscription::Plan {
            after,
            filter,
            heartbeat: params
                .heartbeat
                .unwrap_or(self.state.events.settings().default_heartbeat),
        })
    }
}

/// The caller's site scope is a mandatory api_key restriction: no filter
/// means every site in scope, and a site outside it is refused.
fn restrict_to_scope(mut filter: EventFilter, scope: &SiteScope) -> Result<EventFilter, ApiError> {
    if let SiteScope::Only(allowed) = scope {
        match &filter.api_keys {
            Some(requested) => {
                for key in requested {
                    scope.check(key)?;
                }
            }
            None => filter.api_keys = Some(allowed.clone()),
        }
    }
    Ok(filter)
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
        let ctx = call_context(&request);
        let scope = auth::site_scope(&request);
        let result = self.plan(request.into_inner(), &scope).await.map(|plan| {
            let items =
                subscription::spawn(self.state.repo.clone(), self.state.events.clone(), plan);
            let call_id = ctx.call_id.clone();
            let stream = ReceiverStream::new(items).map(move |item| {
                item.map(convert::stream_item)
                    .map_err(|err| ApiError::from(err).into_status(&call_id))
            });
            Box::pin(stream) as SubscribeStream
        });
        respond(&ctx, result)
    }

    async fn commit_position(
        &self,
        request: Request<pb::CommitPositionRequest>,
    ) -> Result<Response<pb::CommitPositionResponse>, Status> {
        let ctx = call_context(&request);
        let result = async {
            let (consumer, position) = convert::commit_position(request.into_inner())?;
            let stored = self
                .state
                .repo
                .commit_consumer_position(consumer.as_str(), position)
                .await?;
            Ok(pb::CommitPositionResponse {
                consumer: consumer.into_string(),
                position: stored,
                call_id: ctx.call_id.clone(),
            })
        }
        .await;
        respond(&ctx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_caller_only_sees_its_sites() {
        let scope = SiteScope::Only(["3_a".to_owned()].into());
        let open = restrict_to_scope(EventFilter::default(), &scope).unwrap();
        assert_eq!(open.api_keys, Some(["3_a".to_owned()].into()));
        let other = EventFilter {
            api_keys: Some(["3_b".to_owned()].into()),
            ..EventFilter::default()
        };
        assert!(restrict_to_scope(other.clone(), &scope).is_err());
        assert_eq!(
            restrict_to_scope(other.clone(), &SiteScope::All).unwrap(),
            other
        );
    }
}
