from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from approvals import api as ticket_api
from approvals import mine_views, queue_views
from approvals import views as reviewer_views
from approvals.slack import interactions as slack_interactions
from approvals.slack import link_page as slack_link_page
from audit import accounting as audit_accounting
from audit import browse as audit_browse
from audit import review_views
from audit import views as audit_views
from audit.api import AuditEventListView, DisclosuresView
from gateway.http_front import QueryView
from identity.views import LoginView
from phigate import health
from phigate import views as shell_views

api_v1 = [
    path("queries", QueryView.as_view(), name="api-queries"),
    path("tickets/<int:ticket_id>", ticket_api.TicketView.as_view(), name="api-ticket"),
    path("tickets/<int:ticket_id>/wait", ticket_api.TicketWaitView.as_view(), name="api-ticket-wait"),
    path("tickets/<int:ticket_id>/result", ticket_api.TicketResultView.as_view(), name="api-ticket-result"),
    path("tickets/<int:ticket_id>/reviews", ticket_api.TicketReviewsView.as_view(), name="api-ticket-reviews"),
    path("tickets/<int:ticket_id>/cancel", ticket_api.TicketCancelView.as_view(), name="api-ticket-cancel"),
    path("audit/events", AuditEventListView.as_view(), name="api-audit-events"),
    path("audit/disclosures", DisclosuresView.as_view(), name="api-audit-disclosures"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", shell_views.ApiDocsView.as_view(), name="api-docs"),
    # `/` lands each role where its work is (phigate.navigation.landing_url); reviewers get the queue there.
    path("", shell_views.home, name="home"),
    path("queue/", queue_views.queue, name="queue"),
    path("reviews/", mine_views.my_reviews, name="my-reviews"),
    path("requests/", mine_views.my_requests, name="my-requests"),
    path("requests/<int:ticket_id>/result", mine_views.my_request_result, name="my-request-result"),
    path("requests/<int:ticket_id>/cancel", mine_views.my_request_cancel, name="my-request-cancel"),
    path("tickets/<int:ticket_id>/", reviewer_views.ticket_detail, name="ticket-detail"),
    path("tickets/<int:ticket_id>/review", reviewer_views.review, name="ticket-review"),
    path("tickets/<int:ticket_id>/row", queue_views.ticket_row, name="ticket-row"),
    path("tickets/<int:ticket_id>/live", reviewer_views.ticket_live, name="ticket-live"),
    path("tickets/<int:ticket_id>/estimate", reviewer_views.ticket_estimate, name="ticket-estimate"),
    path("audit/", audit_browse.search_page, name="audit-search"),
    path("audit/events.csv", audit_browse.search_csv, name="audit-search-csv"),
    path("audit/events/<int:event_id>/", audit_browse.event_detail, name="audit-event"),
    path("audit/sessions/<path:session_id>/", audit_browse.session_replay, name="audit-replay"),
    path("audit/events/<int:event_id>/reveal", audit_views.reveal_literals, name="audit-reveal-literals"),
    path("audit/disclosures/", audit_accounting.disclosures_page, name="audit-disclosures"),
    path("audit/exports/", audit_views.exports, name="audit-exports"),
    path("audit/exports/<int:export_id>/", audit_views.export_page, name="audit-export"),
    path("audit/exports/<int:export_id>/progress", audit_views.export_progress, name="audit-export-progress"),
    path("audit/exports/<int:export_id>/download", audit_views.export_download, name="audit-export-download"),
    path("audit/reviews/", review_views.review_list, name="audit-reviews"),
    path("audit/reviews/<int:period_id>/", review_views.review_period, name="audit-review"),
    path(
        "audit/reviews/<int:period_id>/findings/<int:finding_id>/note",
        review_views.review_note,
        name="audit-review-note",
    ),
    path("audit/reviews/<int:period_id>/sign-off", review_views.review_sign_off, name="audit-review-sign-off"),
    path("integrations/slack/interactions", slack_interactions.interactions, name="slack-interactions"),
    path("integrations/slack/link", slack_link_page.link_page, name="slack-link"),
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]


if settings.OIDC_ENABLED:
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))

# Branded error pages, with the navigation bar and a way back (templates/errors/).
handler403 = shell_views.permission_denied
handler404 = shell_views.page_not_found
handler500 = shell_views.server_error
