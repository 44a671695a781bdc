//! ConnectionService: removing, unlinking, linking and reading connections.

use tonic::{Request, Response, Status};

use super::{
    AppState, auth::site_scope, call_context, convert, record_site, respond, status::ApiError,
};
use crate::{
    domain::removal::RemovalRequest,
    proto::v1::{self as pb, connection_service_server::ConnectionService},
};

#[derive(Debug, Clone)]
pub struct ConnectionApi {
    state: AppState,
}

impl ConnectionApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn remove_connection(
        &self,
        request: Request<pb::RemoveConnectionRequest>,
    ) -> Result<Response<pb::RemoveConnectionResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let command = convert::remove_connection(&self.state.registry, request.into_inner())?;
            record_site(command.api_key.as_str());
            scope.check(command.api_key.as_str())?;
            let request = RemovalRequest::RemoveConnection(command);
            let outcome = self
                .state
                .repo
                .remove(&self.state.registry, &ctx, request)
                .await?;
            Ok::<_, ApiError>(convert::remove_connection_response(outcome))
        }
        .await;
        respond(&ctx, result)
    }

    async fn unlink_account(
        &self,
        request: Request<pb::UnlinkAccountRequest>,
    ) -> Result<Response<pb::UnlinkAccountResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let command = convert::unlink_account(&self.state.registry, request.into_inner())?;
            record_site(command.vhost.get());
            // The request names the site by vhost: find it to check the scope.
            let lookup = self.state.repo.site_by_vhost(command.vhost).await;
            scope.check_lookup(lookup.map_err(ApiError::from), |s| s.api_key.as_str())?;
            let request = RemovalRequest::UnlinkAccount(command);
            let outcome = self
                .state
                .repo
                .remove(&self.state.registry, &ctx, request)
                .await?;
            Ok::<_, ApiError>(convert::unlink_account_response(outcome))
        }
        .await;
        respond(&ctx, result)
    }

    async fn link_connection(
        &self,
        request: Request<pb::LinkConnectionRequest>,
    ) -> Result<Response<pb::LinkConnectionResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let (api_key, uid, new) =
                convert::link_connection(&self.state.registry, request.into_inner())?;
            record_site(api_key.as_str());
            scope.check(api_key.as_str())?;
            let outcome = self.state.repo.link_connection(&api_key, &uid, new).await?;
            Ok::<_, ApiError>(pb::LinkConnectionResponse {
                call_id: ctx.call_id.clone(),
                identity: Some(convert::identity(&outcome.identity)),
                reactivated: outcome.reactivated,
                account: Some(convert::account(&outcome.account)),
            })
        }
        .await;
        respond(&ctx, result)
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let (api_key, uid) = convert::get_account(request.into_inner())?;
            record_site(api_key.as_str());
            scope.check(api_key.as_str())?;
            let account = self.state.repo.account(&api_key, &uid).await?;
            Ok::<_, ApiError>(pb::GetAccountResponse {
                call_id: ctx.call_id.clone(),
                account: Some(convert::account(&account)),
            })
        }
        .await;
        respond(&ctx, result)
    }
}
