module fnsession.dev/sample-function

go 1.22
