//! ConnectionService: removing, unlinking, linking and reading connections.

use tonic::{Request, Response, Status};

use super::{
    AppState, auth::site_scope, call_context, convert, record_site, respond, status::ApiError,
};
use crate::proto::v1::{self as pb, connection_service_server::ConnectionService};

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
        _request: Request<pb::RemoveConnectionRequest>,
    ) -> Result<Response<pb::RemoveConnectionResponse>, Status> {
        Err(Status::unimplemented(
            "RemoveConnection is not implemented yet",
        ))
    }

    async fn unlink_account(
        &self,
        _request: Request<pb::UnlinkAccountRequest>,
    ) -> Result<Response<pb::UnlinkAccountResponse>, Status> {
        Err(Status::unimplemented(
            "UnlinkAccount is not implemented yet",
        ))
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
