"""dvbridge's entry point: build the FunctionApp and register one blueprint per capability.

Nothing else belongs here; indexing imports this module, so it must import only azure.functions
and the blueprints (which import their heavy dependencies lazily).
"""

import azure.functions as func

from shared.expiry.functions import bp as expiry_bp
from shared.expiry.rotation_functions import bp as rotation_bp
from shared.health.functions import bp as health_bp
from shared.logging import install_redaction, quiet_sdk_request_logging
from shared.sync.functions import bp as sync_bp
from shared.webhooks.functions import bp as webhooks_bp
from shared.webhooks.reconciler_functions import bp as webhook_reconciler_bp
from shared.webhooks.watcher_functions import bp as webhook_watcher_bp

install_redaction()
quiet_sdk_request_logging()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(health_bp)
app.register_functions(sync_bp)
app.register_functions(webhooks_bp)
app.register_functions(webhook_reconciler_bp)
app.register_functions(webhook_watcher_bp)
app.register_functions(expiry_bp)
app.register_functions(rotation_bp)
