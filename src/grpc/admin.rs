//! AdminService: sites, accounts, application keys, user tokens and action
//! links.

use tonic::{Request, Response, Status};

use super::{call_context, convert, respond, status::ApiError};
use crate::{
    proto::{
        codec::timestamp,
        v1::{self as pb, admin_service_server::AdminService},
    },
    service::{AppKeyInput, Services, UserTokenRequest},
};

#[derive(Debug, Clone)]
pub struct AdminApi {
    services: Services,
}

impl AdminApi {
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn upsert_site(
        &self,
        request: Request<pb::UpsertSiteRequest>,
    ) -> Result<Response<pb::UpsertSiteResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let settings = convert::upsert_site(request.into_inner()).parse()?;
            let (site, created) = self.services.upsert_site(&call, settings).await?;
            Ok::<_, ApiError>(pb::UpsertSiteResponse {
                site: Some(convert::site(site)),
                created,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn get_site(
        &self,
        request: Request<pb::GetSiteRequest>,
    ) -> Result<Response<pb::GetSiteResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::GetSiteRequest { api_key } = request.into_inner();
            let api_key = convert::api_key(&api_key)?;
            let site = self.services.get_site(&call, &api_key).await?;
            Ok::<_, ApiError>(pb::GetSiteResponse {
                site: Some(convert::site(site)),
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn upsert_account(
        &self,
        request: Request<pb::UpsertAccountRequest>,
    ) -> Result<Response<pb::UpsertAccountResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let (api_key, uid, login_ids) = convert::upsert_account(request.into_inner())?;
            let (account, created) = self
                .services
                .upsert_account(&call, &api_key, &uid, login_ids)
                .await?;
            Ok::<_, ApiError>(pb::UpsertAccountResponse {
                account: Some(convert::account(account)),
                created,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn create_app_key(
        &self,
        request: Request<pb::CreateAppKeyRequest>,
    ) -> Result<Response<pb::CreateAppKeyResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::CreateAppKeyRequest {
                caller,
                sites,
                permissions,
            } = request.into_inner();
            let new_key = AppKeyInput {
                caller,
                sites,
                permissions,
            }
            .parse()?;
            let created = self.services.create_app_key(&call, new_key).await?;
            Ok::<_, ApiError>(pb::CreateAppKeyResponse {
                app_key: Some(convert::app_key(created.key)),
                secret: created.secret,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn list_app_keys(
        &self,
        request: Request<pb::ListAppKeysRequest>,
    ) -> Result<Response<pb::ListAppKeysResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::ListAppKeysRequest {} = request.into_inner();
            let keys = self.services.list_app_keys(&call).await?;
            Ok::<_, ApiError>(pb::ListAppKeysResponse {
                app_keys: keys.into_iter().map(convert::app_key).collect(),
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn revoke_app_key(
        &self,
        request: Request<pb::RevokeAppKeyRequest>,
    ) -> Result<Response<pb::RevokeAppKeyResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::RevokeAppKeyRequest { user_key } = request.into_inner();
            let key = self.services.revoke_app_key(&call, &user_key).await?;
            Ok::<_, ApiError>(pb::RevokeAppKeyResponse {
                app_key: Some(convert::app_key(key)),
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn create_user_token(
        &self,
        request: Request<pb::CreateUserTokenRequest>,
    ) -> Result<Response<pb::CreateUserTokenResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::CreateUserTokenRequest {
                api_key,
                uid,
                ttl_seconds,
            } = request.into_inner();
            let request = UserTokenRequest::parse(&api_key, &uid, ttl_seconds)?;
            let created = self.services.create_user_token(&call, request).await?;
            Ok::<_, ApiError>(pb::CreateUserTokenResponse {
                token: created.token,
                token_id: created.token_id,
                expires_at: Some(convert::timestamp(created.expires_at)),
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn revoke_user_tokens(
        &self,
        request: Request<pb::RevokeUserTokensRequest>,
    ) -> Result<Response<pb::RevokeUserTokensResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::RevokeUserTokensRequest { api_key, uid } = request.into_inner();
            let api_key = convert::api_key(&api_key)?;
            let uid = crate::domain::Uid::parse("uid", &uid)?;
            let revoked = self
                .services
                .revoke_user_tokens(&call, &api_key, &uid)
                .await?;
            Ok::<_, ApiError>(pb::RevokeUserTokensResponse {
                revoked,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn rotate_action_secret(
        &self,
        request: Request<pb::RotateActionSecretRequest>,
    ) -> Result<Response<pb::RotateActionSecretResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::RotateActionSecretRequest { api_key } = request.into_inner();
            let api_key = convert::api_key(&api_key)?;
            let action_secret = self.services.rotate_action_secret(&call, &api_key).await?;
            Ok::<_, ApiError>(pb::RotateActionSecretResponse {
                action_secret,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn sign_unlink_link(
        &self,
        request: Request<pb::SignUnlinkLinkRequest>,
    ) -> Result<Response<pb::SignUnlinkLinkResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let link = convert::sign_unlink_link(request.into_inner());
            let signed = self.services.sign_unlink_link(&call, link).await?;
            Ok::<_, ApiError>(pb::SignUnlinkLinkResponse {
                link: signed.url,
                expires_at: Some(timestamp(signed.expires_at)),
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }
}
