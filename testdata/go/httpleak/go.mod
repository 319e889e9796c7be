module fixture/httpleak

go 1.21
