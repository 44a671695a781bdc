//! ConnectionService: removing, unlinking, linking and reading connections.

use tonic::{Request, Response, Status};

use super::{call_context, convert, respond, status::ApiError};
use crate::{
    proto::v1::{self as pb, connection_service_server::ConnectionService},
    service::Services,
};

#[derive(Debug, Clone)]
pub struct ConnectionApi {
    services: Services,
}

impl ConnectionApi {
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn remove_connection(
        &self,
        request: Request<pb::RemoveConnectionRequest>,
    ) -> Result<Response<pb::RemoveConnectionResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let input = convert::remove_connection(request.into_inner())?;
            let command = input.parse(self.services.registry())?;
            let outcome = self.services.remove_connection(&call, command).await?;
            Ok::<_, ApiError>(convert::remove_connection_response(outcome))
        }
        .await;
        respond(&call, result)
    }

    async fn unlink_account(
        &self,
        request: Request<pb::UnlinkAccountRequest>,
    ) -> Result<Response<pb::UnlinkAccountResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let input = convert::unlink_account(request.into_inner());
            let command = input.parse(self.services.registry())?;
            let outcome = self.services.unlink_account(&call, command).await?;
            Ok::<_, ApiError>(convert::unlink_account_response(outcome))
        }
        .await;
        respond(&call, result)
    }

    async fn link_connection(
        &self,
        request: Request<pb::LinkConnectionRequest>,
    ) -> Result<Response<pb::LinkConnectionResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let link = convert::link_connection(self.services.registry(), request.into_inner())?;
            let outcome = self.services.link_connection(&call, link).await?;
            Ok::<_, ApiError>(pb::LinkConnectionResponse {
                call_id: call.call_id.clone(),
                identity: Some(convert::identity(outcome.identity)),
                reactivated: outcome.reactivated,
                account: Some(convert::account(outcome.account)),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let (api_key, uid) = convert::get_account(request.into_inner())?;
            let account = self.services.get_account(&call, &api_key, &uid).await?;
            Ok::<_, ApiError>(pb::GetAccountResponse {
                call_id: call.call_id.clone(),
                account: Some(convert::account(account)),
            })
        }
        .await;
        respond(&call, result)
    }
}
