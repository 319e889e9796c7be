module fixture/pipeline

go 1.21
