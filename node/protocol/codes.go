package protocol

// Code is a stable, machine-readable error code, carried as "code" in HTTP
// error bodies and protocol-mode error replies.
type Code string

// The error codes. Clients branch on them; they never change meaning.
const (
	CodeBadRequest      Code = "bad_request"
	CodeUnauthorized    Code = "unauthorized"
	CodeForbidden       Code = "forbidden"
	CodeNotFound        Code = "not_found"
	CodeUpgradeRequired Code = "upgrade_required"
	CodeInvalidChannel  Code = "invalid_channel"
	CodeUnknownCommand  Code = "unknown_command"
	CodeLimitExceeded   Code = "limit_exceeded"
	CodeUnavailable     Code = "unavailable"
	// CodeUnknownOutcome answers a publish the broker did not confirm in
	// time after it may have gone out: it may or may not have been
	// published, and a retry may deliver it twice.
	CodeUnknownOutcome Code = "unknown_outcome"
	CodeInternal       Code = "internal"
)

// The error codes of the backend proxy (docs/AUTH.md, "Backend proxy"): the
// node could not get an answer from the app's backend, so it neither
// allowed nor refused. A retry may succeed.
const (
	// CodeProxyUnavailable: the backend did not answer in time, could not
	// be reached, or answered with a 5xx status.
	CodeProxyUnavailable Code = "proxy_unavailable"
	// CodeProxyError: the backend answered something that is not a
	// proxy answer (another status, not JSON, the wrong shape).
	CodeProxyError Code = "proxy_error"
)

// The error codes of protocol-mode subscriptions.
const (
	// CodeAlreadySubscribed answers a subscribe to a channel the connection
	// is already subscribed to.
	CodeAlreadySubscribed Code = "already_subscribed"
	// CodeNotSubscribed answers an unsubscribe from a channel the
	// connection is not subscribed to.
	CodeNotSubscribed Code = "not_subscribed"
	// CodeNoHistory answers a subscribe with "since" on a channel that
	// keeps no history.
	CodeNoHistory Code = "no_history"
	// CodeBadPosition answers a subscribe whose "since" offset is beyond
	// the channel's latest in the same epoch: no such message was
	// published.
	CodeBadPosition Code = "bad_position"
	// CodeNotRecovered refuses a raw-mode upgrade with ?since= whose
	// messages cannot be recovered (protocol mode answers recovered false).
	CodeNotRecovered Code = "not_recovered"
)

// Close codes Relay sends, with the standard meanings of RFC 6455 where one
// fits. The reason of every close says more.
const (
	CloseNormal          = 1000 // the client or server ended the session
	CloseGoingAway       = 1001 // the server is shutting down at once
	CloseInvalidData     = 1007 // a text message that is not valid UTF-8
	ClosePolicyViolation = 1008 // forbidden, or too many bad commands
	CloseMessageTooBig   = 1009 // a message over the size limit
	CloseInternalError   = 1011 // an unexpected server error
	CloseServiceRestart  = 1012 // the node is draining: reconnect, another node serves you
	CloseTryAgainLater   = 1013 // overloaded, slow consumer or broker down: reconnect with backoff

	// Authentication (docs/AUTH.md): reconnect only with a new token.
	CloseTokenExpired  = 4001 // the token's exp passed (and no refresh came in time)
	CloseTokenInvalid  = 4002 // connect with a missing or refused token
	CloseConnectNeeded = 4003 // no token and no connect command in time
	CloseDisconnected  = 4004 // the backend disconnected the user (POST /api/disconnect)

	// CloseMessagesLost closes a raw-mode connection whose channel lost
	// messages on the way (the node's Redis link was down) and that the
	// node could not recover: reconnect, with ?since= on a channel with
	// history.
	CloseMessagesLost = 4005
)

// Error is the body of every error: an HTTP error response, or the "error"
// of a protocol-mode reply.
type Error struct {
	Code Code `json:"code"`
	// Reason says why a token was refused (unauthorized errors only):
	// expired, malformed, bad_signature, … (docs/AUTH.md).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }
