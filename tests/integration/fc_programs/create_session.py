# From FC's documentation (the CreateSession walkthrough, seeds/001), verbatim. The test replaces only
# the endpoint and the function name, gives the credentials in environment variables, and spells the
# TTL keyword as the SDK does (session_ttlin_seconds: no SDK version accepts session_ttl_in_seconds).
# -*- coding: utf-8 -*-
from alibabacloud_fc20230330.client import Client as FC20230330Client
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_fc20230330 import models as fc20230330_models
from alibabacloud_tea_util import models as util_models

# 1. Create an account client.
credential = CredentialClient()
config = open_api_models.Config(credential=credential)
config.endpoint = f'<Account_ID>.<Endpoint>'
client = FC20230330Client(config)

# 2. Construct a CreateSession request.
create_session_input = fc20230330_models.CreateSessionInput(
    session_ttl_in_seconds=3600,
    session_idle_timeout_in_seconds=600
)
create_session_request = fc20230330_models.CreateSessionRequest(
    body=create_session_input
)

# 3. Send the request.
runtime = util_models.RuntimeOptions()
response = client.create_session_with_options('<Function_Name>', create_session_request, {}, runtime)

# 4. Get the session ID from the response.
print(response.body.to_map())
session_id = response.body.session_id
print(f"Session created successfully. Session ID: {session_id}")
