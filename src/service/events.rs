//! Event use cases: Subscribe (replay then tail) and CommitPosition.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::{ServiceError, ServiceResult, Services, record_site};
use crate::{
    access::{AccessError, CallContext, SiteScope},
    domain::{ConsumerName, EventFilter, StartFrom, StreamItem, event::start_cursor},
    events::subscription,
};

/// Largest accepted heartbeat interval, in seconds.
pub const MAX_HEARTBEAT_SECONDS: u32 = 3600;

/// Subscribe's request, validated: where to start, what to receive, how
/// often to send heartbeats (None: the server default).
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub start: SubscribeStart,
    pub filter: EventFilter,
    pub heartbeat: Option<Duration>,
}

/// The start before the consumer's checkpoint is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeStart {
    Beginning,
    Now,
    AfterPosition(u64),
    Consumer(ConsumerName),
}

/// A subscription's items, in position order, until the client goes away,
/// the server stops, or a failure (the last item).
pub type SubscriptionItems =
    std::pin::Pin<Box<dyn Stream<Item = ServiceResult<StreamItem>> + Send>>;

impl Services {
    /// Starts a subscription: resolves the start (a consumer's checkpoint
    /// must be the caller's own) and spawns the stream's task.
    pub async fn subscribe(
        &self,
        call: &CallContext,
        request: SubscribeRequest,
    ) -> ServiceResult<SubscriptionItems> {
        let filter = restrict_to_scope(request.filter, call.scope())?;
        if let Some(keys) = &filter.api_keys {
            record_site(keys.iter().cloned().collect::<Vec<_>>().join(","));
        }
        let start = match request.start {
            SubscribeStart::Beginning => StartFrom::Beginning,
            SubscribeStart::Now => StartFrom::Now,
            SubscribeStart::AfterPosition(p) => StartFrom::AfterPosition(p),
            SubscribeStart::Consumer(name) => StartFrom::Consumer {
                committed: self.own_checkpoint(call, &name).await?,
            },
        };
        let state = self.storage(|| self.repo.sequence_state()).await?;
        let after = start_cursor(&start, state.last_position, state.pruned_through)?;
        let plan = subscription::Plan {
            after,
            filter,
            heartbeat: request
                .heartbeat
                .unwrap_or(self.events.settings().default_heartbeat),
        };
        let items = subscription::spawn(self.repo.clone(), self.events.clone(), plan);
        Ok(Box::pin(
            ReceiverStream::new(items)
                .flat_map(futures::stream::iter)
                .map(|item| item.map_err(ServiceError::from)),
        ))
    }

    /// Moves the caller's checkpoint `consumer` forward (never back);
    /// returns the stored position. Another caller's checkpoint is refused.
    pub async fn commit_position(
        &self,
        call: &CallContext,
        consumer: &ConsumerName,
        position: u64,
    ) -> ServiceResult<u64> {
        // Idempotent (the checkpoint only moves forward): safe to retry.
        self.storage(|| {
            self.repo
                .commit_consumer_position(call.actor(), consumer.as_str(), position)
        })
        .await?
        .ok_or_else(|| not_owner(consumer))
    }

    /// The committed position of the caller's own checkpoint, if any.
    async fn own_checkpoint(
        &self,
        call: &CallContext,
        consumer: &ConsumerName,
    ) -> ServiceResult<Option<u64>> {
        match self
            .storage(|| self.repo.consumer_checkpoint(consumer.as_str()))
            .await?
        {
            Some((owner, _)) if !owner.is_empty() && owner != call.actor() => {
                Err(not_owner(consumer))
            }
            Some((_, position)) => Ok(Some(position)),
            None => Ok(None),
        }
    }
}

fn not_owner(consumer: &ConsumerName) -> ServiceError {
    AccessError::NotOwner(format!(
        "consumer {:?} belongs to another caller",
        consumer.as_str()
    ))
    .into()
}

/// The caller's site scope is a mandatory api_key restriction: no filter
/// means every site in scope, and a site outside it is refused.
fn restrict_to_scope(mut filter: EventFilter, scope: &SiteScope) -> ServiceResult<EventFilter> {
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
